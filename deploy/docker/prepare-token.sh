#!/bin/sh
# kms-prepare-token DATA_CONFIG: makes the data plane's SoftHSM token ready, once. Initialises
# a token labelled $TOKEN_LABEL (default kms) when the token directory has none, with the
# PINs in $SO_PIN_FILE and $USER_PIN_FILE (first line of each; mounted secrets), then
# lets kms-data create the root key (kms-data --prepare-hsm) and exit. Runs under a lock on
# the token directory, so data-plane replicas that share it never each create a root key.
# Running it again changes nothing.
set -eu
config=${1:?usage: kms-prepare-token DATA_CONFIG}
label=${TOKEN_LABEL:-kms}
tokens=${TOKEN_DIR:-/var/lib/kms/softhsm/tokens}
so_pin_file=${SO_PIN_FILE:-/run/secrets/hsm-so-pin}
user_pin_file=${USER_PIN_FILE:-/run/secrets/hsm-pin}

exec 9>"$tokens/.kms-prepare.lock"
flock 9
if softhsm2-util --show-slots | grep -Eq "^[[:space:]]*Label:[[:space:]]*$label[[:space:]]*\$"; then
    echo "kms-prepare-token: token $label exists"
else
    # softhsm2-util takes PINs only as arguments or at a prompt; they stay inside this container.
    softhsm2-util --init-token --free --label "$label" \
        --so-pin "$(head -n 1 "$so_pin_file")" --pin "$(head -n 1 "$user_pin_file")" >/dev/null
    echo "kms-prepare-token: token $label initialised"
fi
exec kms-data --config "$config" --prepare-hsm
