//! `kuzet nodes`: the nodes sharing their behaviour counts through Redis,
//! as each last reported itself there (`kuzet.cluster.v1`): the version
//! of lists and rules it runs, how far behind the others' counts it is,
//! when it last reported, its health, and the singletons' leases it holds
//! (with a store every node shares). Any node answers for all.

use std::process::ExitCode;

use kuzet_api::cluster as pb;
use kuzet_api::cluster::node_service_client::NodeServiceClient;
use kuzet_control::safe::visible;
use serde_json::json;

use crate::client::{channel, finish, runtime, time_text, Conn, MAX_ANSWER};
use crate::publish_cli::{print, print_json, refused, table, Output};

/// `kuzet nodes`.
#[derive(clap::Args, Debug)]
pub struct NodesArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub format: Output,
    /// How to reach kuzet.
    #[command(flatten)]
    pub conn: Conn,
}

/// Runs `kuzet nodes`.
pub fn nodes(a: NodesArgs) -> ExitCode {
    finish((|| {
        let rt = runtime()?;
        rt.block_on(async {
            let (ch, bearer) = channel(&a.conn).await?;
            let r = NodeServiceClient::with_interceptor(ch, bearer)
                .max_decoding_message_size(MAX_ANSWER)
                .list_nodes(pb::ListNodesRequest {})
                .await
                .map_err(|s| refused(&a.conn, s))?
                .into_inner();
            match a.format {
                Output::Jsonl => {
                    for n in &r.nodes {
                        print_json(&json!({
                            "name": n.name,
                            "version": n.version,
                            "lag_ms": n.lag_ms,
                            "seen": time_text(n.seen_us),
                            "redis_up": n.redis_up,
                            "ready": n.ready,
                            "leases": n.leases.iter().map(|l| json!({
                                "name": l.name,
                                "token": l.token,
                            })).collect::<Vec<_>>(),
                        }))?;
                    }
                }
                Output::Table if r.nodes.is_empty() => eprintln!("no node has reported"),
                Output::Table => {
                    let rows: Vec<Vec<String>> = r
                        .nodes
                        .iter()
                        .map(|n| {
                            vec![
                                visible(&n.name).into_owned(),
                                visible(&n.version).into_owned(),
                                format!("{} ms", n.lag_ms),
                                format!("{:.1} s ago", (r.now_us - n.seen_us).max(0) as f64 / 1e6),
                                if n.ready { "ready" } else { "NOT READY" }.into(),
                                if n.redis_up { "up" } else { "DOWN" }.into(),
                                leads(&n.leases),
                            ]
                        })
                        .collect();
                    print(&table(
                        &[
                            "NODE", "VERSION", "LAG", "REPORTED", "HEALTH", "REDIS", "LEADS",
                        ],
                        &rows,
                    ))?;
                }
            }
            Ok(())
        })
    })())
}

/// The leases a node holds, `name#token` each, or `-`.
fn leads(leases: &[pb::Lease]) -> String {
    if leases.is_empty() {
        return "-".into();
    }
    leases
        .iter()
        .map(|l| format!("{}#{}", visible(&l.name), l.token))
        .collect::<Vec<_>>()
        .join(" ")
}
