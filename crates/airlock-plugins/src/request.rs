//! The `request` resource of `airlock:plugin@0.2.0` and `0.3.0` (the same in both): a
//! plugin reads the handshake through it, field by field, while its `on-handshake` call
//! runs. Only what it reads is copied into its memory, where a 0.1 plugin gets the whole
//! record, one allocation in the guest per string. Also here: older versions' verdicts
//! and log levels in the types the rest of airlock uses (0.3's verdict, 0.1's levels).

use std::ptr::NonNull;

use wasmtime::component::Resource;

use crate::bindings::{v0_1, v0_2, v0_3};
use crate::handshake::Handshake;
use crate::instance::StoreData;

/// The handshake a running `on-handshake` call decides; empty between calls.
///
/// It points at the caller's [`Handshake`], which outlives the call: [`Self::during`]
/// sets it just before the call and clears it when the call returns. A handle to the
/// `request` resource is a borrow, which the component model ends with the call, so no
/// method can run outside it; one that did would find nothing here and trap.
#[derive(Default)]
pub(crate) struct CurrentRequest(Option<NonNull<Handshake<'static>>>);

// SAFETY: the pointer is set, read and cleared by the one thread that runs the call,
// within the call (see above); `Handshake` itself is `Send` and `Sync`.
#[allow(unsafe_code)]
unsafe impl Send for CurrentRequest {}

impl CurrentRequest {
    /// Run `call` with `request` as the current request of `store`'s plugin.
    pub(crate) fn during<R>(
        store: &mut wasmtime::Store<StoreData>,
        request: &Handshake<'_>,
        call: impl FnOnce(&mut wasmtime::Store<StoreData>) -> R,
    ) -> R {
        // Erasing the lifetime is what lets the store ('static) point at it; the pointer
        // is cleared below before `request` can go away.
        let erased = NonNull::from(request).cast::<Handshake<'static>>();
        store.data_mut().current.0 = Some(erased);
        // Clear it even if the call unwinds (a panicking host function), so a store
        // never keeps a pointer past the request it was set for.
        struct Clear<'s>(&'s mut wasmtime::Store<StoreData>);
        impl Drop for Clear<'_> {
            fn drop(&mut self) {
                self.0.data_mut().current.0 = None;
            }
        }
        let guard = Clear(store);
        call(&mut *guard.0)
    }

    fn peek(&self) -> Option<&Handshake<'_>> {
        // SAFETY: set by `during` from a live reference, and cleared before that reference
        // ends; see the type's documentation.
        #[allow(unsafe_code)]
        self.0.map(|request| unsafe { request.as_ref() })
    }

    fn get(&self) -> wasmtime::Result<&Handshake<'_>> {
        self.peek().ok_or_else(|| {
            wasmtime::format_err!(
                "the request was used outside the on-handshake call that received it"
            )
        })
    }

    /// The running call's request id, for the host's `log`; empty outside a call
    /// (`configure`).
    pub(crate) fn id(&self) -> &str {
        self.peek().map_or("", |request| &request.id)
    }
}

/// The handle a call passes for the current request (its only one, so its number says
/// nothing).
pub(crate) fn handle<T: 'static>() -> Resource<T> {
    Resource::new_borrow(0)
}

/// The `request` methods, for each version that has the resource.
macro_rules! request_resource {
    ($module:ident, $wit:path) => {
        mod $module {
            use super::values;
            use crate::instance::StoreData;
            use wasmtime::component::Resource;
            use $wit as wit;

            impl wit::Host for StoreData {}

            impl wit::HostRequest for StoreData {
                fn id(&mut self, _: Resource<wit::Request>) -> wasmtime::Result<String> {
                    Ok(self.current.get()?.id.to_string())
                }

                fn method(&mut self, _: Resource<wit::Request>) -> wasmtime::Result<String> {
                    Ok(self.current.get()?.method.to_string())
                }

                fn scheme(&mut self, _: Resource<wit::Request>) -> wasmtime::Result<String> {
                    Ok(self.current.get()?.scheme.to_string())
                }

                fn authority(&mut self, _: Resource<wit::Request>) -> wasmtime::Result<String> {
                    Ok(self.current.get()?.authority.to_string())
                }

                fn path(&mut self, _: Resource<wit::Request>) -> wasmtime::Result<String> {
                    Ok(self.current.get()?.path.to_string())
                }

                fn query(&mut self, _: Resource<wit::Request>) -> wasmtime::Result<Option<String>> {
                    Ok(self.current.get()?.query.as_deref().map(str::to_string))
                }

                fn header(
                    &mut self,
                    _: Resource<wit::Request>,
                    name: String,
                ) -> wasmtime::Result<Option<String>> {
                    Ok(values(self.current.get()?, &name)
                        .next()
                        .map(str::to_string))
                }

                fn header_all(
                    &mut self,
                    _: Resource<wit::Request>,
                    name: String,
                ) -> wasmtime::Result<Vec<String>> {
                    Ok(values(self.current.get()?, &name)
                        .map(str::to_string)
                        .collect())
                }

                fn headers(
                    &mut self,
                    _: Resource<wit::Request>,
                ) -> wasmtime::Result<Vec<(String, String)>> {
                    let request = self.current.get()?;
                    Ok(request
                        .headers
                        .iter()
                        .map(|(name, value)| (name.to_string(), value.to_string()))
                        .collect())
                }

                fn client_addr(&mut self, _: Resource<wit::Request>) -> wasmtime::Result<String> {
                    Ok(self.current.get()?.client_addr.to_string())
                }

                fn tls(
                    &mut self,
                    _: Resource<wit::Request>,
                ) -> wasmtime::Result<Option<wit::TlsInfo>> {
                    Ok(self.current.get()?.tls.as_ref().map(|t| wit::TlsInfo {
                        sni: t.sni.as_deref().map(str::to_string),
                        alpn: t.alpn.as_deref().map(str::to_string),
                        version: t.version.to_string(),
                        client_cert_subject: t.client_cert_subject.as_deref().map(str::to_string),
                        client_cert_sans: t
                            .client_cert_sans
                            .iter()
                            .map(|s| s.to_string())
                            .collect(),
                    }))
                }

                fn route(&mut self, _: Resource<wit::Request>) -> wasmtime::Result<String> {
                    Ok(self.current.get()?.route.to_string())
                }

                fn upgrade(
                    &mut self,
                    _: Resource<wit::Request>,
                ) -> wasmtime::Result<Option<String>> {
                    Ok(self.current.get()?.upgrade.as_deref().map(str::to_string))
                }

                fn subprotocols(
                    &mut self,
                    _: Resource<wit::Request>,
                ) -> wasmtime::Result<Vec<String>> {
                    let request = self.current.get()?;
                    Ok(request.subprotocols.iter().map(|s| s.to_string()).collect())
                }

                fn drop(&mut self, _: Resource<wit::Request>) -> wasmtime::Result<()> {
                    // Plugins only ever get borrowed handles; there is nothing to free.
                    Ok(())
                }
            }
        }
    };
}

request_resource!(request_v0_2, crate::bindings::v0_2::airlock::plugin::types);
request_resource!(request_v0_3, crate::bindings::v0_3::airlock::plugin::types);

/// The values of header `name` (any case), in order.
fn values<'r>(request: &'r Handshake<'_>, name: &'r str) -> impl Iterator<Item = &'r str> {
    request
        .headers
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| &**v)
}

/// The verdict types of an older version, as the chain takes them (0.3's). Each version
/// has the same records but for the fields it lacks, which change nothing.
macro_rules! verdict_from {
    ($name:ident, $old:path, $verdict:ty) => {
        pub(crate) fn $name(verdict: $verdict) -> v0_3::airlock::plugin::types::Verdict {
            use v0_3::airlock::plugin::types as new;
            use $old as old;
            match verdict {
                old::Verdict::Allow(m) => new::Verdict::Allow(new::Mutations {
                    path: m.path,
                    query: m.query,
                    set_headers: m.set_headers,
                    remove_headers: m.remove_headers,
                    upstream: m.upstream,
                    affinity_key: m.affinity_key,
                    limit_key: None,
                    subprotocol: m.subprotocol,
                    response_headers: m.response_headers,
                    attributes: m.attributes,
                }),
                old::Verdict::Reject(r) => new::Verdict::Reject(new::Rejection {
                    status: r.status,
                    body: r.body,
                    headers: r.headers,
                }),
            }
        }
    };
}

verdict_from!(
    verdict_v0_1,
    v0_1::airlock::plugin::types,
    v0_1::airlock::plugin::types::Verdict
);
verdict_from!(
    verdict_v0_2,
    v0_2::airlock::plugin::types,
    v0_2::airlock::plugin::types::Verdict
);

/// Log levels of the later versions, as 0.1's (all the same).
macro_rules! level_from {
    ($name:ident, $new:path) => {
        pub(crate) fn $name(level: $new) -> v0_1::airlock::plugin::host::Level {
            use v0_1::airlock::plugin::host::Level as L1;
            type L = $new;
            match level {
                L::Trace => L1::Trace,
                L::Debug => L1::Debug,
                L::Info => L1::Info,
                L::Warn => L1::Warn,
                L::Error => L1::Error,
            }
        }
    };
}

level_from!(level_v0_2, v0_2::airlock::plugin::host::Level);
level_from!(level_v0_3, v0_3::airlock::plugin::host::Level);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_read_outside_a_call_is_an_error_not_a_dangling_read() {
        let error = CurrentRequest::default().get().unwrap_err();
        assert!(
            error.to_string().contains("outside the on-handshake call"),
            "{error}"
        );
    }
}
