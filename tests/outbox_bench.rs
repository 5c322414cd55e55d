//! Append throughput figures (`cargo test --release --test outbox_bench -- --ignored --nocapture`).
//! Ignored by default: it measures the disk, it does not check behaviour.

use camgate::outbox::bench::bench_append;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn outbox_append_throughput() {
    for (concurrency, group_commit, events) in [(64, false, 2_000), (64, true, 40_000), (256, false, 2_000), (256, true, 60_000)] {
        let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let r = bench_append(tmp.path(), events, concurrency, 500, group_commit).await.unwrap();
        println!("{r}");
    }
}
