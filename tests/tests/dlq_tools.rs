//! `eventbus dlq` and the DLQ processor on librdkafka's in-process mock cluster: stats,
//! inspect, replay by filter at a rate and never twice, export → edit → import, and
//! parking after the maximum replays. The same scenarios run on tansu in
//! `dlq_real_broker.rs`.
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use eventbus_tests::dlq_scenarios as s;
use rdkafka::mocking::MockCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_and_inspect_count_and_show_the_letters_by_category() {
    let cluster = MockCluster::new(1).unwrap();
    s::stats_and_inspect_count_and_show_the_letters_by_category(
        Some(&cluster),
        &cluster.bootstrap_servers(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_sends_exactly_the_selected_letters_at_the_rate_and_never_twice() {
    let cluster = MockCluster::new(1).unwrap();
    s::replay_sends_exactly_the_selected_letters_at_the_rate_and_never_twice(
        Some(&cluster),
        &cluster.bootstrap_servers(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_edit_import_delivers_the_fixed_records_and_a_bad_edit_produces_nothing() {
    let cluster = MockCluster::new(1).unwrap();
    s::export_edit_import_delivers_the_fixed_records_and_a_bad_edit_produces_nothing(
        Some(&cluster),
        &cluster.bootstrap_servers(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_letter_is_parked_after_the_maximum_replays_and_nothing_loops() {
    let cluster = MockCluster::new(1).unwrap();
    s::a_letter_is_parked_after_the_maximum_replays_and_nothing_loops(
        Some(&cluster),
        &cluster.bootstrap_servers(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_run_again_while_letters_arrive_sends_each_letter_once() {
    let cluster = MockCluster::new(1).unwrap();
    s::a_replay_run_again_while_letters_arrive_sends_each_letter_once(
        Some(&cluster),
        &cluster.bootstrap_servers(),
    )
    .await;
}
