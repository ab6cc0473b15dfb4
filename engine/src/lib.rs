//! kuzet's engine: the data plane and control plane behind the `kuzet` binary.

pub mod sip;
