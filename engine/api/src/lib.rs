//! kuzet's gRPC interfaces, generated at build time from `proto/`:
//! [`investigation`], the investigators' API that kuzet serves on its
//! control address, [`lists`] and [`rules`], the rule authors' publishing
//! APIs served beside it, [`cases`], the Centre's alerts as cases, and [`register`], the pre-trial register's API that
//! kuzet calls to report incidents (and that `kuzet-sim register` serves as
//! a stand-in). All are versioned packages; a breaking change is a new
//! `v2` package beside the old one.

#![forbid(unsafe_code)]
#![allow(missing_docs, clippy::all)]

/// `kuzet.investigation.v1`: query the intercepted-call log, incidents,
/// counts and the audit log.
pub mod investigation {
    tonic::include_proto!("kuzet.investigation.v1");
}

/// `kuzet.register.v1`: incidents reported to the pre-trial register.
pub mod register {
    tonic::include_proto!("kuzet.register.v1");
}

/// `kuzet.lists.v1`: versions of the number lists, published by rule
/// authors, with diffs, rollback and lookups.
pub mod lists {
    tonic::include_proto!("kuzet.lists.v1");
}

/// `kuzet.rules.v1`: versions of the behaviour rules, staged and put in
/// force by rule authors and approvers.
pub mod rules {
    tonic::include_proto!("kuzet.rules.v1");
}

/// `kuzet.cases.v1`: the National Bank Anti-Fraud Centre's alerts as
/// cases with deadlines, and the operators' decisions on them.
pub mod cases {
    tonic::include_proto!("kuzet.cases.v1");
}

/// `kuzet.cluster.v1`: the nodes sharing their counts, with their
/// versions, lag and health.
pub mod cluster {
    tonic::include_proto!("kuzet.cluster.v1");
}

/// Every package's encoded descriptors, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/kuzet_descriptor.bin"));
