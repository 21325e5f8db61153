//! Config propagation for `ws-bench propagation`: from a weight change's acknowledgement to
//! its application on every proxy, read from each proxy's `/applied`.

use std::time::SystemTime;

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub async fn http_get(addr: &str, path: &str) -> Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

pub async fn propagation(cp: &str, proxies: &[String], writes: usize, pool: &str, backend: &str) -> Result<()> {
    use switchyard_proto::v1::{admin_client::AdminClient, SetBackendWeightRequest};
    let mut admin = AdminClient::connect(format!("http://{cp}")).await?;
    let mut h = Histogram::<u64>::new(3)?;
    let mut ahead = 0;
    for i in 0..writes {
        let weight = 2 + (i % 2) as u32;
        let req = SetBackendWeightRequest { pool: pool.into(), address: backend.into(), weight, force: false };
        let rev = admin.set_backend_weight(req).await?.into_inner().revision;
        let acked = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?.as_micros() as i64;
        let path = format!("/applied?revision={rev}");
        let waits = proxies.iter().map(|p| http_get(p, &path));
        let mut last = i64::MIN;
        for body in futures::future::join_all(waits).await {
            let v: serde_json::Value = serde_json::from_str(&body?)?;
            let at = v["applied_unix_us"].as_i64().context("proxy did not apply the write within 5s")?;
            last = last.max(at);
        }
        // A proxy may apply a change before the writer has read its acknowledgement.
        let d = last - acked;
        if d < 0 {
            ahead += 1;
        }
        h.record(d.max(0) as u64)?;
    }
    println!(
        "{}",
        json!({"phase": "propagation", "proxies": proxies.len(), "writes": writes,
            "p50_ms": h.value_at_quantile(0.5) as f64 / 1000.0, "p99_ms": h.value_at_quantile(0.99) as f64 / 1000.0,
            "max_ms": h.max() as f64 / 1000.0, "applied_before_ack": ahead})
    );
    Ok(())
}
