#!/usr/bin/env python3
"""The official Alibaba Cloud KMS SDKs against kms-gateway, unchanged.

Driven by tests/tests/gateway_sdk.rs, which starts both planes and the gateway and passes, in
the environment:

  KMS_GATEWAY_ENDPOINT   host:port of the gateway (HTTP)
  KMS_AK_ID, KMS_AK_SECRET             a pair of the account's root principal
  KMS_USER_AK_ID, KMS_USER_AK_SECRET   a pair of a RAM user of the same account
  KMS_INSTANCE_ID        a software KMS instance of the account
  KMS_ACCOUNT            the account id

`sdk_test.py run` runs the scenario with each SDK in each signature mode:

  tea-acs3  alibabacloud-kms20160120 as it comes (ACS3-HMAC-SHA256)
  tea-rpc   the same with signature_algorithm = "v2" (RPC HMAC-SHA1)
  tea-acs4  the same with signature_version = "v4" (ACS4-HMAC-SHA256)
  core-rpc  aliyun-python-sdk-kms on aliyun-python-sdk-core (RPC HMAC-SHA1)

`sdk_test.py scenario MODE` runs the scenario in one mode only.

`sdk_test.py https` runs a short round trip in each mode of the newer SDK over HTTPS, trusting
the certificate KMS_GATEWAY_CA names.

Prints one line per check; exits non-zero on the first failure.
"""

import base64
import hashlib
import json
import os
import sys
import time
import uuid

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding

ENDPOINT = os.environ["KMS_GATEWAY_ENDPOINT"]
REGION = "cn-hangzhou"
MODES = ["tea-acs3", "tea-rpc", "tea-acs4", "core-rpc"]


class CallError(Exception):
    """What the SDK raised, reduced to the code and the HTTP status."""

    def __init__(self, code, status, message, original):
        super().__init__(f"{code} ({status}): {message}")
        self.code = code
        self.status = status
        self.original = original


class TeaClient:
    """alibabacloud-kms20160120 on alibabacloud-tea-openapi."""

    def __init__(self, mode, ak, secret):
        from alibabacloud_kms20160120.client import Client
        from alibabacloud_tea_openapi import utils_models

        self.ca = os.environ.get("KMS_GATEWAY_CA")
        config = utils_models.Config(
            access_key_id=ak,
            access_key_secret=secret,
            region_id=REGION,
            endpoint=ENDPOINT,
            protocol="https" if self.ca else "http",
        )
        if mode == "tea-rpc":
            config.signature_algorithm = "v2"
        elif mode == "tea-acs4":
            config.signature_version = "v4"
        self.client = Client(config)

    def call(self, action, params):
        from alibabacloud_kms20160120 import models
        from darabonba.runtime import RuntimeOptions

        snake = "".join("_" + c.lower() if c.isupper() else c for c in action).lstrip("_")
        method = getattr(self.client, snake + "_with_options")
        model = getattr(models, action + "Request", None)
        # Actions without parameters (DescribeRegions) take no request model.
        args = [model().from_map(params)] if model is not None else []
        try:
            return method(*args, RuntimeOptions(ca=self.ca)).body.to_map()
        except Exception as e:  # the SDK's own exception types, reduced
            code = getattr(e, "code", None)
            status = getattr(e, "status_code", None)
            data = getattr(e, "data", None) or {}
            if status is None and isinstance(data, dict):
                status = data.get("statusCode")
            if code is None:
                raise
            raise CallError(code, status, getattr(e, "message", str(e)), e) from e


class CoreClient:
    """aliyun-python-sdk-kms on aliyun-python-sdk-core."""

    LISTS = {"ResourceId": "ResourceIds", "Tag": "Tags", "TagKey": "TagKeys"}

    def __init__(self, ak, secret):
        from aliyunsdkcore.client import AcsClient

        self.client = AcsClient(ak, secret, REGION)

    def call(self, action, params):
        import importlib

        from aliyunsdkcore.acs_exception.exceptions import ClientException, ServerException

        module = importlib.import_module(f"aliyunsdkkms.request.v20160120.{action}Request")
        request = getattr(module, action + "Request")()
        request.set_endpoint(ENDPOINT)
        request.set_protocol_type("http")
        for name, value in params.items():
            if name == "RegionId":
                continue  # the client's region, which the SDK sends itself
            setter = "set_" + self.LISTS.get(name, name)
            if isinstance(value, dict):
                value = json.dumps(value)
            getattr(request, setter)(value)
        try:
            return json.loads(self.client.do_action_with_exception(request))
        except ServerException as e:
            raise CallError(e.get_error_code(), e.get_http_status(), e.get_error_msg(), e) from e
        except ClientException as e:
            raise CallError(e.get_error_code(), None, e.get_error_msg(), e) from e


def client(mode, ak, secret):
    if mode == "core-rpc":
        return CoreClient(ak, secret)
    return TeaClient(mode, ak, secret)


def check(condition, what):
    if not condition:
        raise AssertionError(what)


def expect_error(fn, code, status=None):
    try:
        fn()
    except CallError as e:
        check(e.code == code, f"expected {code}, got {e.code} ({e})")
        if status is not None:
            check(e.status == status, f"expected HTTP {status} for {code}, got {e.status}")
        return e
    raise AssertionError(f"expected {code}, the call succeeded")


def once_converged(fn, stale_code, timeout=10.0):
    """fn's result once the data plane has taken in a key's new state: the data plane learns
    of a change through its key watch, so for a moment after EnableKey it may still answer
    with the old state's refusal (stale_code); any other error, or the deadline, fails."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except CallError as e:
            if e.code != stale_code or time.monotonic() > deadline:
                raise
        time.sleep(0.05)


def b64(data):
    return base64.b64encode(data).decode()


def scenario(mode):
    root = client(mode, os.environ["KMS_AK_ID"], os.environ["KMS_AK_SECRET"])
    user = client(mode, os.environ["KMS_USER_AK_ID"], os.environ["KMS_USER_AK_SECRET"])
    instance = os.environ["KMS_INSTANCE_ID"]
    tag = mode.replace("-", "")
    call = root.call

    # A software key with tags; describe; list with filters.
    created = call("CreateKey", {
        "DKMSInstanceId": instance,
        "KeySpec": "Aliyun_AES_256",
        "KeyUsage": "ENCRYPT/DECRYPT",
        "Description": f"gateway test {mode}",
        "Tags": json.dumps([{"TagKey": "suite", "TagValue": tag}]),
    })
    meta = created["KeyMetadata"]
    key_id = meta["KeyId"]
    check(meta["KeyState"] == "Enabled", f"new key state {meta}")
    check(meta["KeySpec"] == "Aliyun_AES_256", f"new key spec {meta}")
    check(created.get("RequestId"), "no RequestId")
    described = call("DescribeKey", {"KeyId": key_id})["KeyMetadata"]
    check(described["Description"] == f"gateway test {mode}", f"describe {described}")
    check(described["Arn"].endswith(key_id), f"arn {described}")
    tags = call("ListResourceTags", {"KeyId": key_id})["Tags"]["Tag"]
    check({"KeyId": key_id, "TagKey": "suite", "TagValue": tag} in tags, f"tags {tags}")
    listed = call("ListKeys", {
        "Filters": json.dumps([
            {"Key": "KeyState", "Values": ["Enabled"]},
            {"Key": "KeySpec", "Values": ["Aliyun_AES_256"]},
        ]),
        "PageNumber": 1,
        "PageSize": 100,
    })
    ids = [k["KeyId"] for k in listed["Keys"]["Key"]]
    check(key_id in ids, f"ListKeys with filters misses {key_id}: {ids}")
    check(isinstance(listed["TotalCount"], int), f"TotalCount {listed}")
    check(listed["PageSize"] == 100 and listed["PageNumber"] == 1, f"paging {listed}")
    ec_filtered = call("ListKeys", {
        "Filters": json.dumps([{"Key": "KeySpec", "Values": ["EC_P256"]}]),
        "PageSize": 100,
    })
    check(key_id not in [k["KeyId"] for k in ec_filtered["Keys"]["Key"]], "filter ignored")
    either = call("ListKeys", {
        "Filters": json.dumps([{"Key": "KeySpec", "Values": ["EC_P256", "Aliyun_AES_256"]}]),
        "PageSize": 100,
    })
    check(key_id in [k["KeyId"] for k in either["Keys"]["Key"]], "filter values are alternatives")
    print(f"{mode}: create, describe, list with filters: ok")

    # Encrypt and decrypt with an encryption context.
    context = {"purpose": "test", "mode": mode}
    plaintext = b"hello from " + mode.encode()
    enc = call("Encrypt", {"KeyId": key_id, "Plaintext": b64(plaintext), "EncryptionContext": context})
    check(enc["KeyId"] == key_id, f"encrypt {enc}")
    dec = call("Decrypt", {"CiphertextBlob": enc["CiphertextBlob"], "EncryptionContext": context})
    check(base64.b64decode(dec["Plaintext"]) == plaintext, "decrypt gave other bytes")
    expect_error(
        lambda: call("Decrypt", {"CiphertextBlob": enc["CiphertextBlob"], "EncryptionContext": {"purpose": "other"}}),
        "InvalidCiphertext",
        400,
    )
    print(f"{mode}: encrypt, decrypt with context: ok")

    # A data key, decrypted.
    dk = call("GenerateDataKey", {"KeyId": key_id, "KeySpec": "AES_256", "EncryptionContext": context})
    check(len(base64.b64decode(dk["Plaintext"])) == 32, "data key length")
    opened = call("Decrypt", {"CiphertextBlob": dk["CiphertextBlob"], "EncryptionContext": context})
    check(opened["Plaintext"] == dk["Plaintext"], "data key does not decrypt to itself")
    print(f"{mode}: generate data key, decrypt: ok")

    # Re-encrypt under a second key.
    other = call("CreateKey", {"DKMSInstanceId": instance, "KeySpec": "Aliyun_AES_256"})["KeyMetadata"]["KeyId"]
    re = call("ReEncrypt", {
        "CiphertextBlob": enc["CiphertextBlob"],
        "SourceEncryptionContext": context,
        "DestinationKeyId": other,
        "DestinationEncryptionContext": {"moved": "yes"},
    })
    check(re["KeyId"] == other, f"re-encrypt {re}")
    dec = call("Decrypt", {"CiphertextBlob": re["CiphertextBlob"], "EncryptionContext": {"moved": "yes"}})
    check(base64.b64decode(dec["Plaintext"]) == plaintext and dec["KeyId"] == other, "re-encrypted")
    print(f"{mode}: re-encrypt: ok")

    # Aliases.
    alias = f"alias/gw-{tag}-{uuid.uuid4().hex[:8]}"
    call("CreateAlias", {"AliasName": alias, "KeyId": key_id})
    check(call("Encrypt", {"KeyId": alias, "Plaintext": b64(b"x")})["KeyId"] == key_id, "alias use")
    call("UpdateAlias", {"AliasName": alias, "KeyId": other})
    aliases = call("ListAliases", {"PageSize": 100})["Aliases"]["Alias"]
    mine = [a for a in aliases if a["AliasName"] == alias]
    check(len(mine) == 1 and mine[0]["KeyId"] == other, f"alias after update {mine}")
    by_key = call("ListAliasesByKeyId", {"KeyId": other})["Aliases"]["Alias"]
    check([a["AliasName"] for a in by_key] == [alias], f"aliases of the key {by_key}")
    print(f"{mode}: alias create, update, list: ok")

    # Tags: flattened lists.
    call("TagResources", {
        "RegionId": REGION,
        "ResourceType": "key",
        "ResourceId": [key_id, other],
        "Tag": [{"Key": "team", "Value": "kms"}, {"Key": "tier", "Value": "gold"}],
    })
    tags = call("ListResourceTags", {"KeyId": other})["Tags"]["Tag"]
    check(sorted(t["TagKey"] for t in tags) == ["team", "tier"], f"tagged {tags}")
    listed = call("ListTagResources", {"RegionId": REGION, "ResourceType": "key", "ResourceId": [key_id]})
    check(len(listed["TagResources"]["TagResource"]) == 3, f"ListTagResources {listed}")
    call("UntagResources", {"RegionId": REGION, "ResourceType": "key", "ResourceId": [key_id, other], "TagKey": ["tier"]})
    tags = call("ListResourceTags", {"KeyId": other})["Tags"]["Tag"]
    check([t["TagKey"] for t in tags] == ["team"], f"untagged {tags}")
    print(f"{mode}: tag, untag: ok")

    # Rotation.
    call("UpdateRotationPolicy", {"KeyId": key_id, "EnableAutomaticRotation": True, "RotationInterval": "604800s"})
    meta = call("DescribeKey", {"KeyId": key_id})["KeyMetadata"]
    check(meta["AutomaticRotation"] == "Enabled" and meta["RotationInterval"] == "604800s", f"rotation {meta}")
    call("UpdateRotationPolicy", {"KeyId": key_id, "EnableAutomaticRotation": False})
    meta = call("DescribeKey", {"KeyId": key_id})["KeyMetadata"]
    check(meta["AutomaticRotation"] == "Disabled", f"rotation off {meta}")
    print(f"{mode}: rotation policy: ok")

    # Deletion scheduled and cancelled.
    call("ScheduleKeyDeletion", {"KeyId": other, "PendingWindowInDays": 7})
    meta = call("DescribeKey", {"KeyId": other})["KeyMetadata"]
    check(meta["KeyState"] == "PendingDeletion" and meta.get("DeleteDate"), f"scheduled {meta}")
    call("CancelKeyDeletion", {"KeyId": other})
    meta = call("DescribeKey", {"KeyId": other})["KeyMetadata"]
    check(meta["KeyState"] == "Enabled", f"cancelled {meta}")
    print(f"{mode}: schedule, cancel deletion: ok")

    # EC_P256: sign, verify with the PEM from GetPublicKey.
    signer = call("CreateKey", {"DKMSInstanceId": instance, "KeySpec": "EC_P256", "KeyUsage": "SIGN/VERIFY"})["KeyMetadata"]
    version = signer["PrimaryKeyVersion"]
    message = b"signed through " + mode.encode()
    digest = hashlib.sha256(message).digest()
    signed = call("AsymmetricSign", {
        "KeyId": signer["KeyId"], "KeyVersionId": version, "Algorithm": "ECDSA_SHA_256", "Digest": b64(digest),
    })
    pem = call("GetPublicKey", {"KeyId": signer["KeyId"], "KeyVersionId": version})["PublicKey"]
    public = serialization.load_pem_public_key(pem.encode())
    public.verify(base64.b64decode(signed["Value"]), message, ec.ECDSA(hashes.SHA256()))
    verified = call("AsymmetricVerify", {
        "KeyId": signer["KeyId"], "KeyVersionId": version, "Algorithm": "ECDSA_SHA_256",
        "Digest": b64(digest), "Value": signed["Value"],
    })
    check(verified["Value"] is True, f"AsymmetricVerify {verified}")
    print(f"{mode}: EC_P256 sign, verify with cryptography: ok")

    # AES material imported.
    external = call("CreateKey", {"DKMSInstanceId": instance, "KeySpec": "Aliyun_AES_256", "Origin": "EXTERNAL"})["KeyMetadata"]
    check(external["KeyState"] == "PendingImport", f"external {external}")
    params = call("GetParametersForImport", {
        "KeyId": external["KeyId"], "WrappingAlgorithm": "RSAES_OAEP_SHA_256", "WrappingKeySpec": "RSA_2048",
    })
    wrapping = serialization.load_der_public_key(base64.b64decode(params["PublicKey"]))
    material = os.urandom(32)
    wrapped = wrapping.encrypt(
        material,
        padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None),
    )
    call("ImportKeyMaterial", {
        "KeyId": external["KeyId"], "ImportToken": params["ImportToken"], "EncryptedKeyMaterial": b64(wrapped),
    })
    meta = call("DescribeKey", {"KeyId": external["KeyId"]})["KeyMetadata"]
    check(meta["KeyState"] == "Enabled", f"imported {meta}")
    sealed = call("Encrypt", {"KeyId": external["KeyId"], "Plaintext": b64(b"imported")})
    check(base64.b64decode(call("Decrypt", {"CiphertextBlob": sealed["CiphertextBlob"]})["Plaintext"]) == b"imported", "imported key")
    print(f"{mode}: import AES material: ok")

    regions = call("DescribeRegions", {})["Regions"]["Region"]
    check(len(regions) == 1 and regions[0]["RegionId"], f"regions {regions}")

    # Errors, as the SDK raises them against the cloud.
    expect_error(lambda: call("DescribeKey", {"KeyId": "key-" + uuid.uuid4().hex}), "Forbidden.KeyNotFound", 404)
    wrong = client(mode, os.environ["KMS_AK_ID"], "x" * 30)
    if mode == "core-rpc":
        # The older SDK compares the server's string to sign with its own: equal strings mean
        # the secret is wrong, which it reports as such.
        expect_error(lambda: wrong.call("DescribeRegions", {}), "InvalidAccessKeySecret", 400)
    else:
        expect_error(lambda: wrong.call("DescribeRegions", {}), "SignatureDoesNotMatch", 400)
    # A user the key's policy does not allow.
    locked = call("CreateKey", {"DKMSInstanceId": instance, "KeySpec": "Aliyun_AES_256"})["KeyMetadata"]["KeyId"]
    account = os.environ["KMS_ACCOUNT"]
    call("SetKeyPolicy", {"KeyId": locked, "PolicyName": "default", "Policy": json.dumps({
        "Version": "1",
        "Statement": [{
            "Effect": "Allow", "Principal": {"RAM": [f"acs:ram::{account}:root"]},
            "Action": ["kms:*"], "Resource": ["*"],
        }],
    })})
    expect_error(lambda: user.call("Encrypt", {"KeyId": locked, "Plaintext": b64(b"no")}), "Forbidden.NoPermission", 403)
    check(user.call("DescribeRegions", {})["Regions"], "the user's pair works")
    print(f"{mode}: errors (unknown key, wrong secret, no permission): ok")


def more(mode):
    """The remaining actions, once per SDK."""
    root = client(mode, os.environ["KMS_AK_ID"], os.environ["KMS_AK_SECRET"])
    call = root.call
    instance = os.environ["KMS_INSTANCE_ID"]
    meta = call("CreateKey", {"DKMSInstanceId": instance})["KeyMetadata"]
    key_id = meta["KeyId"]

    call("UpdateKeyDescription", {"KeyId": key_id, "Description": "changed"})
    check(call("DescribeKey", {"KeyId": key_id})["KeyMetadata"]["Description"] == "changed", "description")
    call("DisableKey", {"KeyId": key_id})
    expect_error(lambda: call("Encrypt", {"KeyId": key_id, "Plaintext": b64(b"x")}), "Rejected.Disabled", 400)
    call("EnableKey", {"KeyId": key_id})
    once_converged(lambda: call("Encrypt", {"KeyId": key_id, "Plaintext": b64(b"x")}), "Rejected.Disabled")

    version = call("CreateKeyVersion", {"KeyId": key_id})["KeyVersion"]["KeyVersionId"]
    versions = call("ListKeyVersions", {"KeyId": key_id, "PageSize": 10})
    check(versions["TotalCount"] == 2, f"versions {versions}")
    described = call("DescribeKeyVersion", {"KeyId": key_id, "KeyVersionId": version})["KeyVersion"]
    check(described["KeyVersionId"] == version and described["CreationDate"], f"version {described}")

    alias = f"alias/more-{mode.replace('-', '')}-{uuid.uuid4().hex[:8]}"
    call("CreateAlias", {"AliasName": alias, "KeyId": key_id})
    call("DeleteAlias", {"AliasName": alias})
    check(call("ListAliasesByKeyId", {"KeyId": key_id})["Aliases"]["Alias"] == [], "alias deleted")

    blob = call("GenerateDataKeyWithoutPlaintext", {"KeyId": key_id, "NumberOfBytes": 16})["CiphertextBlob"]
    check(len(base64.b64decode(call("Decrypt", {"CiphertextBlob": blob})["Plaintext"])) == 16, "data key size")
    password = call("GetRandomPassword", {"PasswordLength": 16})["RandomPassword"]
    check(len(password) == 16, f"password {password!r}")
    policy = json.loads(call("GetKeyPolicy", {"KeyId": key_id, "PolicyName": "default"})["Policy"])
    check("Statement" in policy, f"policy {policy}")

    call("SetDeletionProtection", {
        "ProtectedResourceArn": meta["Arn"], "EnableDeletionProtection": True,
        "DeletionProtectionDescription": "keep",
    })
    expect_error(lambda: call("ScheduleKeyDeletion", {"KeyId": key_id, "PendingWindowInDays": 7}),
                 "Forbidden.DeletionProtection", 400)
    call("SetDeletionProtection", {"ProtectedResourceArn": meta["Arn"], "EnableDeletionProtection": False})

    call("TagResource", {"KeyId": key_id, "Tags": json.dumps([{"TagKey": "one", "TagValue": "1"}])})
    call("UntagResource", {"KeyId": key_id, "TagKeys": json.dumps(["one"])})
    check(call("ListResourceTags", {"KeyId": key_id})["Tags"]["Tag"] == [], "old tag API")

    # RSA: encrypt here with the public key, decrypt in the service, and the other way round.
    rsa_key = call("CreateKey", {"DKMSInstanceId": instance, "KeySpec": "RSA_2048", "KeyUsage": "ENCRYPT/DECRYPT"})["KeyMetadata"]
    rsa_version = rsa_key["PrimaryKeyVersion"]
    oaep = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    pem = call("GetPublicKey", {"KeyId": rsa_key["KeyId"], "KeyVersionId": rsa_version})["PublicKey"]
    sealed = serialization.load_pem_public_key(pem.encode()).encrypt(b"rsa secret", oaep)
    opened = call("AsymmetricDecrypt", {
        "KeyId": rsa_key["KeyId"], "KeyVersionId": rsa_version, "Algorithm": "RSAES_OAEP_SHA_256",
        "CiphertextBlob": b64(sealed),
    })
    check(base64.b64decode(opened["Plaintext"]) == b"rsa secret", "AsymmetricDecrypt")
    sealed = call("AsymmetricEncrypt", {
        "KeyId": rsa_key["KeyId"], "KeyVersionId": rsa_version, "Algorithm": "RSAES_OAEP_SHA_256",
        "Plaintext": b64(b"round"),
    })["CiphertextBlob"]
    opened = call("AsymmetricDecrypt", {
        "KeyId": rsa_key["KeyId"], "KeyVersionId": rsa_version, "Algorithm": "RSAES_OAEP_SHA_256",
        "CiphertextBlob": sealed,
    })
    check(base64.b64decode(opened["Plaintext"]) == b"round", "AsymmetricEncrypt")

    # A data key exported to a caller's RSA key, twice: the same key both times.
    from cryptography.hazmat.primitives.asymmetric import rsa
    mine = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_der = mine.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    export = {"PublicKeyBlob": b64(public_der), "WrappingAlgorithm": "RSAES_OAEP_SHA_256", "WrappingKeySpec": "RSA_2048"}
    made = call("GenerateAndExportDataKey", dict(export, KeyId=key_id, KeySpec="AES_256"))
    first = mine.decrypt(base64.b64decode(made["ExportedDataKey"]), oaep)
    again = call("ExportDataKey", dict(export, CiphertextBlob=made["CiphertextBlob"]))
    check(mine.decrypt(base64.b64decode(again["ExportedDataKey"]), oaep) == first and len(first) == 32, "export")

    # Imported material deleted: the key waits for material again.
    external = call("CreateKey", {"DKMSInstanceId": instance, "Origin": "EXTERNAL"})["KeyMetadata"]["KeyId"]
    params = call("GetParametersForImport", {
        "KeyId": external, "WrappingAlgorithm": "RSAES_OAEP_SHA_256", "WrappingKeySpec": "RSA_2048",
    })
    wrapping = serialization.load_der_public_key(base64.b64decode(params["PublicKey"]))
    call("ImportKeyMaterial", {
        "KeyId": external, "ImportToken": params["ImportToken"],
        "EncryptedKeyMaterial": b64(wrapping.encrypt(os.urandom(32), oaep)),
    })
    call("DeleteKeyMaterial", {"KeyId": external})
    check(call("DescribeKey", {"KeyId": external})["KeyMetadata"]["KeyState"] == "PendingImport", "material deleted")

    # An action the API does not have.
    if mode == "core-rpc":
        from aliyunsdkcore.request import CommonRequest
        from aliyunsdkcore.acs_exception.exceptions import ServerException
        request = CommonRequest(domain=ENDPOINT, version="2016-01-20", action_name="NoSuchAction")
        request.set_protocol_type("http")
        request.set_method("POST")
        try:
            root.client.do_action_with_exception(request)
            raise AssertionError("an unknown action succeeded")
        except ServerException as e:
            check(e.get_error_code() == "InvalidAction.NotFound" and e.get_http_status() == 404, str(e))
    else:
        from alibabacloud_tea_openapi import utils_models
        from darabonba.runtime import RuntimeOptions
        params = utils_models.Params(
            action="NoSuchAction", version="2016-01-20", protocol="HTTP", pathname="/", method="POST",
            auth_type="AK", style="RPC", req_body_type="formData", body_type="json",
        )
        try:
            root.client.call_api(params, utils_models.OpenApiRequest(query={}), RuntimeOptions())
            raise AssertionError("an unknown action succeeded")
        except Exception as e:
            check(getattr(e, "code", None) == "InvalidAction.NotFound", f"unknown action: {e}")
    print(f"{mode}: the remaining actions: ok")


def replay_and_stale(mode):
    """A replayed nonce and a stale timestamp, by fixing what the SDK would make fresh."""
    ak, secret = os.environ["KMS_AK_ID"], os.environ["KMS_AK_SECRET"]
    fixed = "nonce-" + uuid.uuid4().hex
    if mode == "core-rpc":
        from aliyunsdkcore.utils import parameter_helper as helper
        patch_target, name = helper, ("get_uuid", "get_iso_8061_date")
    elif mode == "tea-acs4":
        from alibabacloud_tea_util.client import Client as UtilClient
        from alibabacloud_openapi_util.client import Client as OpenApiUtilClient
        patch_target, name = None, None
    else:
        from alibabacloud_tea_openapi.utils import Utils
        patch_target, name = Utils, ("get_nonce", "get_timestamp")

    def with_patch(nonce=None, timestamp=None, fn=None):
        saved = []
        if mode == "tea-acs4":
            targets = [(UtilClient, "get_nonce", nonce), (OpenApiUtilClient, "get_timestamp", timestamp)]
        else:
            targets = [(patch_target, name[0], nonce), (patch_target, name[1], timestamp)]
        for obj, attr, value in targets:
            if value is not None:
                saved.append((obj, attr, getattr(obj, attr)))
                setattr(obj, attr, staticmethod(lambda v=value: v) if isinstance(obj, type) else (lambda v=value: v))
        try:
            return fn()
        finally:
            for obj, attr, old in saved:
                setattr(obj, attr, old)

    c = client(mode, ak, secret)
    with_patch(nonce=fixed, fn=lambda: c.call("DescribeRegions", {}))
    expect_error(lambda: with_patch(nonce=fixed, fn=lambda: c.call("DescribeRegions", {})), "SignatureNonceUsed", 400)
    stale = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 16 * 60))
    expect_error(lambda: with_patch(timestamp=stale, fn=lambda: c.call("DescribeRegions", {})), "InvalidTimeStamp.Expired", 400)
    print(f"{mode}: replayed nonce, stale timestamp: ok")


def https():
    """Over HTTPS (KMS_GATEWAY_CA names the gateway's certificate), each signature mode."""
    for mode in ["tea-acs3", "tea-rpc", "tea-acs4"]:
        c = client(mode, os.environ["KMS_AK_ID"], os.environ["KMS_AK_SECRET"])
        key = c.call("CreateKey", {"DKMSInstanceId": os.environ["KMS_INSTANCE_ID"]})["KeyMetadata"]["KeyId"]
        blob = c.call("Encrypt", {"KeyId": key, "Plaintext": b64(b"over tls")})["CiphertextBlob"]
        check(base64.b64decode(c.call("Decrypt", {"CiphertextBlob": blob})["Plaintext"]) == b"over tls", "https")
    print("https: ok")


def main():
    command = sys.argv[1] if len(sys.argv) > 1 else "run"
    if command == "run":
        for mode in MODES:
            scenario(mode)
            replay_and_stale(mode)
        for mode in ["tea-acs3", "core-rpc"]:
            more(mode)
    elif command == "scenario":
        scenario(sys.argv[2])
    elif command == "https":
        https()
    else:
        raise SystemExit(f"unknown command {command}")
    print("all checks passed")


if __name__ == "__main__":
    main()
