//! A macro for RPCs that exist in the contract but are not served yet: each answers
//! `UNIMPLEMENTED` with a message naming the RPC.

/// Expands to `#[async_trait]`-shaped trait methods answering `UNIMPLEMENTED`.
///
/// ```text
/// kms_runtime::unimplemented_rpcs! {
///     "kms.v1.KeyManagementService";
///     list_keys(ListKeysRequest) -> ListKeysResponse = "ListKeys";
/// }
/// ```
#[macro_export]
macro_rules! unimplemented_rpcs {
    ($service:literal; $($method:ident($req:ty) -> $resp:ty = $rpc:literal;)*) => {
        $(
            fn $method<'life0, 'async_trait>(
                &'life0 self,
                _request: ::tonic::Request<$req>,
            ) -> ::std::pin::Pin<
                Box<
                    dyn ::std::future::Future<
                            Output = ::std::result::Result<::tonic::Response<$resp>, ::tonic::Status>,
                        > + ::std::marker::Send
                        + 'async_trait,
                >,
            >
            where
                'life0: 'async_trait,
                Self: 'async_trait,
            {
                Box::pin(async move {
                    Err(::tonic::Status::unimplemented(concat!(
                        $service, "/", $rpc, " is not implemented yet"
                    )))
                })
            }
        )*
    };
}
