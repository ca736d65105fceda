//! Fault injection: a known data set, every record with its own id, is
//! ingested while a seeded driver kills and restarts the parts at random
//! moments; afterwards the sink is compared with the source record by
//! record and the archive task by task.
//!
//! `cargo test` runs a short form that still injects every kind of fault;
//! `make chaos` a long one. `SLUICE_CHAOS_SEED` replays a run,
//! `SLUICE_CHAOS_ROUNDS` sets how many faults each test injects (the data
//! set grows with it).

mod support;

use std::time::{Duration, Instant};

use rand::RngExt;
use serde_json::json;
use sluice_testenv::{MinioEnv, free_port};
use support::chaos::{Chaos, DONE, DataSet, Fault, Ledger, ingest_on, tail};
use support::dataplane::{Ingest, Part, wait_until_done};
use support::{eventually, kube_with_crd, minio, sources};

/// The worker named `name`, for the coordinator on `port`.
fn worker(ingest: &Ingest, port: u16, name: &str) -> Part {
    ingest.worker_with(port, name, &["--grace=0s"])
}

/// Restarts, as the kubelet would, any part that exited by itself, noting
/// it as unplanned.
fn restart_exited(
    ingest: &Ingest,
    ledger: &mut Ledger,
    coordinator: &mut Part,
    workers: &mut [Part],
    args: &[&str],
) {
    if !coordinator.running() {
        ledger
            .unplanned_exits
            .push(format!("coordinator:\n{}", tail(&coordinator.log())));
        *coordinator = ingest.coordinator(Some(coordinator.port), args);
    }
    for (n, worker) in workers.iter_mut().enumerate() {
        if !worker.running() {
            ledger
                .unplanned_exits
                .push(format!("worker {n}:\n{}", tail(&worker.log())));
            *worker = self::worker(ingest, coordinator.port, &format!("w{n}-again"));
        }
    }
}

/// Kills the coordinator and workers and restarts MinIO and the API
/// server at random moments of an ingest.
#[tokio::test]
async fn random_crashes_and_restarts_lose_and_duplicate_nothing() {
    const TEST: &str = "crashes and restarts";
    let kinds = [
        Fault::KillCoordinator,
        Fault::KillWorker,
        Fault::RestartMinio,
        Fault::RestartApiServer,
    ];
    let mut chaos = Chaos::new(TEST);
    let started = Instant::now();
    let kube = kube_with_crd();
    let client = kube.client().await;
    let namespace = kube.namespace("chaos").unwrap();
    let minio = minio();
    let mut ingest = ingest_on(minio, "orders").await;
    ingest.config.id.namespace = namespace.clone();
    ingest.write_config();
    // The coordinator publishes its status: restarts of the API server
    // must not stop it.
    ingest.use_kubeconfig(kube.kubeconfig());
    let mut source = sources::orders("orders");
    source["spec"]["source"]["s3"]["bucket"] = json!(ingest.config.source.s3.bucket);
    sources::apply(&client, &namespace, &source).await;

    let mut data = DataSet::new(chaos.rounds);
    data.put_wave(&ingest).await;
    let args = ["--status-interval=300ms"];
    let mut coordinator = ingest.coordinator(None, &args);
    let port = coordinator.port;
    let mut workers: Vec<Part> = (0..3)
        .map(|n| worker(&ingest, port, &format!("w{n}")))
        .collect();
    let mut ledger = Ledger::default();
    let mut killed_workers = 0;
    for fault in chaos.schedule(&kinds) {
        data.put_wave(&ingest).await;
        chaos.pause().await;
        restart_exited(&ingest, &mut ledger, &mut coordinator, &mut workers, &args);
        println!("{TEST} {:>6.1}s: {fault}", started.elapsed().as_secs_f64());
        match fault {
            Fault::KillCoordinator => {
                coordinator.kill();
                coordinator = ingest.coordinator(Some(port), &args);
            }
            Fault::KillWorker => {
                let n = chaos.rng.random_range(0..workers.len());
                workers[n].kill();
                killed_workers += 1;
                workers[n] = worker(&ingest, port, &format!("w{n}-{killed_workers}"));
            }
            Fault::RestartMinio => {
                let downtime = Duration::from_millis(chaos.rng.random_range(0..2000));
                minio.restart(downtime).unwrap();
            }
            Fault::RestartApiServer => kube.restart_apiserver().unwrap(),
            _ => unreachable!("not scheduled here"),
        }
        ledger.fault(fault);
    }
    while data.put < data.objects {
        data.put_wave(&ingest).await;
    }
    let deadline = Instant::now() + DONE;
    let summary = loop {
        restart_exited(&ingest, &mut ledger, &mut coordinator, &mut workers, &args);
        let summary = coordinator.summary();
        if summary.objects.ingested + summary.objects.failed >= data.objects as u64
            && summary.tasks.pending == 0
            && summary.tasks.running == 0
        {
            break summary;
        }
        assert!(
            Instant::now() < deadline,
            "not done after {DONE:?}: {summary:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The published status caught up after the API server's restarts.
    eventually("the status to show every object ingested", DONE, || async {
        let status = sources::source(&client, &namespace, "orders")
            .await
            .status?;
        (status.objects?.ingested == summary.objects.ingested).then_some(())
    })
    .await;
    ledger.check(&ingest, &data.ids(), data.objects).await;
    ledger.print(TEST, &chaos, started.elapsed());
    ledger.assert_clean(&kinds);
}

/// Two coordinators of one source at once, again and again: a second one
/// starts while the first runs (each has its own workers), and either is
/// killed at random. The checkpoint fences the older one out, every
/// newcomer resumes from it, and the output stays exactly once.
#[tokio::test]
async fn two_coordinators_at_once_never_corrupt_the_checkpoint() {
    const TEST: &str = "split brain";
    let kinds = [
        Fault::SecondCoordinator,
        Fault::KillCoordinator,
        Fault::KillWorker,
    ];
    let mut chaos = Chaos::new(TEST);
    let started = Instant::now();
    // Its own MinIO: the other test restarts the shared one.
    let minio = MinioEnv::start().unwrap_or_else(|err| panic!("{err}"));
    let ingest = ingest_on(&minio, "split").await;
    let mut data = DataSet::new(chaos.rounds);
    data.put_wave(&ingest).await;

    let ports = [free_port().unwrap(), free_port().unwrap()];
    let mut coordinators: [Option<Part>; 2] = [Some(ingest.coordinator(Some(ports[0]), &[])), None];
    let mut epoch = coordinators[0].as_ref().unwrap().summary().epoch;
    // Two workers per coordinator port, as if the Service sent each
    // worker to one of the two.
    let mut workers: Vec<Part> = (0..4)
        .map(|n| worker(&ingest, ports[n % 2], &format!("w{n}")))
        .collect();
    let mut ledger = Ledger::default();
    let mut killed_workers = 0;

    /// Notes coordinators that stopped: fenced out, or unplanned.
    fn reap(coordinators: &mut [Option<Part>; 2], ledger: &mut Ledger) {
        for slot in coordinators.iter_mut() {
            if let Some(part) = slot.as_mut()
                && !part.running()
            {
                let log = part.log();
                if log.contains("was taken over by another coordinator") {
                    ledger.fenced += 1;
                } else {
                    ledger
                        .unplanned_exits
                        .push(format!("coordinator:\n{}", tail(&log)));
                }
                *slot = None;
            }
        }
    }
    // Starts a coordinator on `slot`'s port and checks it resumed from
    // the checkpoint with a newer epoch.
    let mut start = |coordinators: &mut [Option<Part>; 2], slot: usize| {
        let part = ingest.coordinator(Some(ports[slot]), &[]);
        let resumed = part.summary().epoch;
        assert!(resumed > epoch, "epoch {resumed} after {epoch}");
        epoch = resumed;
        coordinators[slot] = Some(part);
    };

    for fault in chaos.schedule(&kinds) {
        data.put_wave(&ingest).await;
        chaos.pause().await;
        reap(&mut coordinators, &mut ledger);
        println!("{TEST} {:>6.1}s: {fault}", started.elapsed().as_secs_f64());
        match fault {
            Fault::SecondCoordinator => {
                // Into the free slot; with none free, one is killed first.
                let slot = match coordinators.iter().position(Option::is_none) {
                    Some(slot) => slot,
                    None => {
                        let slot = chaos.rng.random_range(0..2);
                        coordinators[slot].as_mut().unwrap().kill();
                        ledger.fault(Fault::KillCoordinator);
                        slot
                    }
                };
                start(&mut coordinators, slot);
            }
            Fault::KillCoordinator => {
                let running: Vec<usize> = (0..2).filter(|&s| coordinators[s].is_some()).collect();
                let slot = running[chaos.rng.random_range(0..running.len())];
                coordinators[slot].as_mut().unwrap().kill();
                coordinators[slot] = None;
                if running.len() == 1 {
                    start(&mut coordinators, chaos.rng.random_range(0..2));
                }
            }
            Fault::KillWorker => {
                let n = chaos.rng.random_range(0..workers.len());
                workers[n].kill();
                killed_workers += 1;
                workers[n] = worker(&ingest, ports[n % 2], &format!("w{n}-{killed_workers}"));
            }
            _ => unreachable!("not scheduled here"),
        }
        ledger.fault(fault);
    }
    while data.put < data.objects {
        data.put_wave(&ingest).await;
    }
    // The newest coordinator survives; the other is fenced out at its next
    // checkpoint (or check of it, when idle).
    let deadline = Instant::now() + DONE;
    while {
        reap(&mut coordinators, &mut ledger);
        coordinators.iter().flatten().count() > 1
    } {
        assert!(
            Instant::now() < deadline,
            "both coordinators still run after {DONE:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let survivor = coordinators.iter().flatten().next().unwrap();
    assert_eq!(
        survivor.summary().epoch,
        epoch,
        "the newest coordinator survives"
    );
    wait_until_done(survivor, data.objects as u64, DONE).await;
    ledger.check(&ingest, &data.ids(), data.objects).await;
    ledger.print(TEST, &chaos, started.elapsed());
    ledger.assert_clean(&kinds);
}
