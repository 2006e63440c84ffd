//! `EtcdMembership` and `Registration` against a real etcd (Debian's `etcd-server`, started
//! on loopback by `LocalEtcd`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rlhf_membership::local::LocalEtcd;
use rlhf_membership::{EtcdMembership, Membership, MembershipError, Registration, Role};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

const CONNECT: Duration = Duration::from_secs(10);

async fn connect(etcd: &LocalEtcd, prefix: &str) -> Result<EtcdMembership> {
    Ok(EtcdMembership::connect(&[etcd.endpoint().to_string()], prefix, CONNECT, None).await?)
}

/// Polls `f` every 100 ms until it returns true, or fails after `within`.
async fn eventually<F, Fut>(within: Duration, what: &str, mut f: F) -> Result
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + within;
    while !f().await? {
        if Instant::now() > deadline {
            return Err(format!("not within {within:?}: {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test]
async fn registrations_epochs_and_fencing() -> Result {
    let etcd = LocalEtcd::start()?;
    let m = connect(&etcd, "/test/a").await?;
    let other = connect(&etcd, "/test/b").await?;
    let ttl = Duration::from_secs(30);
    let w1 = m.register(Role::Rollout, "w1", "http://h:1", ttl).await?;
    let w2 = m.register(Role::Rollout, "w2", "http://h:2", ttl).await?;
    let s = m.register(Role::Scorer, "s", "http://h:3", ttl).await?;
    assert!(w1 < w2 && w2 < s, "epochs grow: {w1} {w2} {s}");
    let live = m.members(Role::Rollout).await?;
    assert_eq!(
        live.iter()
            .map(|x| (x.name.as_str(), x.address.as_str(), x.epoch))
            .collect::<Vec<_>>(),
        [("w1", "http://h:1", w1), ("w2", "http://h:2", w2)]
    );
    // Another prefix is another cluster.
    assert!(other.members(Role::Rollout).await?.is_empty());
    // Heartbeats do not change the epoch.
    m.heartbeat(Role::Rollout, "w1", w1).await?;
    assert_eq!(m.members(Role::Rollout).await?[0].epoch, w1);
    // A second process registering the same name fences the first.
    let w1b = m.register(Role::Rollout, "w1", "http://h:9", ttl).await?;
    assert!(w1b > s);
    assert!(matches!(
        m.heartbeat(Role::Rollout, "w1", w1).await,
        Err(MembershipError::StaleEpoch { given, current, .. }) if given == w1 && current == w1b
    ));
    assert!(matches!(
        m.deregister(Role::Rollout, "w1", w1).await,
        Err(MembershipError::StaleEpoch { .. })
    ));
    assert_eq!(m.members(Role::Rollout).await?[0].address, "http://h:9");
    m.deregister(Role::Rollout, "w1", w1b).await?;
    assert!(matches!(
        m.heartbeat(Role::Rollout, "w1", w1b).await,
        Err(MembershipError::NotRegistered { .. })
    ));
    assert_eq!(m.members(Role::Rollout).await?.len(), 1);
    // Bad input is refused, naming what is wrong.
    let e = m
        .register(Role::Rollout, "a/b", "http://h:1", ttl)
        .await
        .err()
        .ok_or("a name with `/` was accepted")?;
    assert!(e.to_string().contains("a/b"), "{e}");
    Ok(())
}

#[tokio::test]
async fn silent_members_expire_and_registrations_stay_alive() -> Result {
    let etcd = LocalEtcd::start()?;
    let m = Arc::new(connect(&etcd, "/test").await?);
    let ttl = Duration::from_secs(2);
    // Registered, then never heartbeated (a process killed with -9): etcd drops it.
    let dead = m.register(Role::Scorer, "dead", "http://h:1", ttl).await?;
    let kept = Registration::start(m.clone(), Role::Scorer, "kept", "http://h:2", ttl).await?;
    let first = kept.epoch().ok_or("fenced at start")?;
    eventually(Duration::from_secs(8), "the silent member expires", || {
        let m = m.clone();
        async move { Ok(m.members(Role::Scorer).await?.len() == 1) }
    })
    .await?;
    assert!(matches!(
        m.heartbeat(Role::Scorer, "dead", dead).await,
        Err(MembershipError::NotRegistered { .. })
    ));
    // Three TTLs later the heartbeated one is still there with its first epoch.
    tokio::time::sleep(3 * ttl).await;
    let live = m.members(Role::Scorer).await?;
    assert_eq!(live.len(), 1);
    assert_eq!((live[0].name.as_str(), live[0].epoch), ("kept", first));
    // Its registration vanishes (as if it expired while the process was paused): the
    // background task registers again, with a newer epoch.
    m.deregister(Role::Scorer, "kept", first).await?;
    eventually(Duration::from_secs(5), "registered again", || {
        let m = m.clone();
        async move { Ok(m.members(Role::Scorer).await?.len() == 1) }
    })
    .await?;
    let again = kept.epoch().ok_or("fenced")?;
    assert!(again > first);
    assert_eq!(m.members(Role::Scorer).await?[0].epoch, again);
    // Leaving removes it at once, not after the TTL.
    kept.leave().await?;
    assert!(m.members(Role::Scorer).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn a_fenced_registration_stops_and_leaves_its_successor_alone() -> Result {
    let etcd = LocalEtcd::start()?;
    let m = Arc::new(connect(&etcd, "/test").await?);
    let ttl = Duration::from_secs(2);
    let old = Registration::start(m.clone(), Role::Rollout, "w", "http://old:1", ttl).await?;
    let new = m.register(Role::Rollout, "w", "http://new:1", ttl).await?;
    let old_ref = &old;
    eventually(
        Duration::from_secs(5),
        "the old one notices",
        || async move { Ok(old_ref.epoch().is_none()) },
    )
    .await?;
    old.leave().await?;
    let live = m.members(Role::Rollout).await?;
    assert_eq!(
        (live[0].address.as_str(), live[0].epoch),
        ("http://new:1", new)
    );
    Ok(())
}

#[tokio::test]
async fn rank_zero_publishes_and_the_others_wait() -> Result {
    let etcd = LocalEtcd::start()?;
    let ttl = Duration::from_secs(30);
    let rank0 = connect(&etcd, "/test").await?;
    let epoch = rank0
        .register(Role::Learner, "learner-0", "http://h:0", ttl)
        .await?;
    // Three ranks, each its own connection, wait before anything is published.
    let mut waiters = Vec::new();
    for _ in 1..4 {
        let m = connect(&etcd, "/test").await?;
        waiters.push(tokio::spawn(async move {
            m.wait_published("nccl-0", Duration::from_secs(10)).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let id: Vec<u8> = (0..128u8).map(|i| i.wrapping_mul(37)).collect();
    rank0
        .publish(Role::Learner, "learner-0", epoch, "nccl-0", &id)
        .await?;
    for w in waiters {
        assert_eq!(w.await??, id);
    }
    // A rank arriving late reads it at once.
    let late = connect(&etcd, "/test").await?;
    assert_eq!(
        late.wait_published("nccl-0", Duration::from_secs(1))
            .await?,
        id
    );
    // A fenced rank 0 cannot overwrite what its successor published.
    let newer = rank0
        .register(Role::Learner, "learner-0", "http://h:0", ttl)
        .await?;
    assert!(matches!(
        rank0
            .publish(Role::Learner, "learner-0", epoch, "nccl-0", b"stale")
            .await,
        Err(MembershipError::StaleEpoch { .. })
    ));
    rank0
        .publish(Role::Learner, "learner-0", newer, "nccl-0", b"fresh")
        .await?;
    assert_eq!(
        late.wait_published("nccl-0", Duration::from_secs(1))
            .await?,
        b"fresh"
    );
    // The value lives as long as the publisher's registration.
    rank0.deregister(Role::Learner, "learner-0", newer).await?;
    let e = late
        .wait_published("nccl-0", Duration::from_millis(500))
        .await
        .err()
        .ok_or("published value outlived its publisher")?;
    assert!(matches!(e, MembershipError::Timeout(_)), "{e}");
    assert!(e.to_string().contains("/test/rendezvous/nccl-0"), "{e}");
    Ok(())
}

#[tokio::test]
async fn an_unreachable_etcd_fails_fast_naming_the_endpoint() -> Result {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let endpoint = format!("127.0.0.1:{port}");
    let t = Instant::now();
    let e = EtcdMembership::connect(
        std::slice::from_ref(&endpoint),
        "/x",
        Duration::from_secs(2),
        None,
    )
    .await
    .err()
    .ok_or("connected to nothing")?;
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(e.to_string().contains(&endpoint), "{e}");
    let e = EtcdMembership::connect(&[endpoint], "no-slash", Duration::from_secs(2), None)
        .await
        .err()
        .ok_or("a prefix without `/` was accepted")?;
    assert!(e.to_string().contains("cluster.etcd_prefix"), "{e}");
    Ok(())
}

#[tokio::test]
async fn one_leader_at_a_time_and_the_next_takes_over() -> Result {
    let etcd = LocalEtcd::start()?;
    let ttl = Duration::from_secs(2);
    let a = connect(&etcd, "/test").await?;
    let first = a.lead("coordinator", "http://a:1", ttl, |_| {}).await?;
    // A second candidate waits, told who leads.
    let b = connect(&etcd, "/test").await?;
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let told = seen.clone();
    let second = tokio::spawn(async move {
        b.lead("coordinator", "http://b:1", ttl, move |h| {
            told.lock().map(|mut v| v.push(h.to_string())).ok();
        })
        .await
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!second.is_finished(), "two leaders at once");
    assert_eq!(
        seen.lock()
            .map_err(|_| "poisoned")?
            .first()
            .map(String::as_str),
        Some("http://a:1")
    );
    // Resigning hands over at once.
    let t = Instant::now();
    let first_lost = first.lost();
    first.resign().await;
    let second = tokio::time::timeout(Duration::from_secs(5), second).await???;
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    // Giving leadership up is not losing it.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), first_lost)
            .await
            .is_err(),
        "a resigned leadership reported as lost"
    );
    // A leader that dies without resigning (its lease is no longer renewed) is replaced once
    // the lease expires.
    let c = connect(&etcd, "/test").await?;
    let third = tokio::spawn(async move { c.lead("coordinator", "http://c:1", ttl, |_| {}).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!third.is_finished());
    drop(second);
    let third = tokio::time::timeout(Duration::from_secs(10), third).await???;
    assert!(!third.is_lost());
    // Losing etcd loses leadership: the holder is told.
    drop(etcd);
    tokio::time::timeout(Duration::from_secs(10), third.lost()).await?;
    assert!(third.is_lost());
    Ok(())
}

/// One member of a three-member etcd dies (the one every client talks to first): registrations
/// keep being renewed, leadership is kept, members can be listed and new ones register, all
/// through the members left.
#[tokio::test]
async fn membership_goes_on_when_one_of_three_etcd_members_dies() -> Result {
    let mut etcd = LocalEtcd::cluster(3)?;
    let endpoints: Vec<String> = etcd.iter().map(|e| e.endpoint().to_string()).collect();
    let m = EtcdMembership::connect(&endpoints, "/test/three", CONNECT, None).await?;
    let ttl = Duration::from_secs(6);
    let m: Arc<dyn Membership> = Arc::new(m.clone());
    let kept = Registration::start(m.clone(), Role::Learner, "l", "http://h:1", ttl).await?;
    let epoch = kept.epoch().ok_or("fenced at start")?;
    let leader = EtcdMembership::connect(&endpoints, "/test/three", CONNECT, None)
        .await?
        .lead("coordinator", "http://c:1", ttl, |_| {})
        .await?;
    etcd[0].kill();
    // Two TTLs: the registration would have expired, and leadership been lost, without
    // renewals through the other members.
    tokio::time::sleep(2 * ttl).await;
    assert!(
        !leader.is_lost(),
        "leadership lost with two members of three up"
    );
    assert_eq!(kept.epoch(), Some(epoch), "the registration was made again");
    let learners = m.members(Role::Learner).await?;
    assert_eq!(learners.len(), 1, "{learners:?}");
    assert_eq!(learners[0].epoch, epoch);
    m.register(Role::Rollout, "r", "http://h:2", ttl).await?;
    assert_eq!(m.members(Role::Rollout).await?.len(), 1);
    Ok(())
}

/// etcd with TLS on its client port and client certificates required (`--client-cert-auth`):
/// a client with a certificate of the CA registers; one without, or with another CA's, is
/// refused naming the endpoint.
#[tokio::test]
async fn etcd_over_mutual_tls() -> Result {
    use rlhf_proto::security::Tls;
    let dir = tempfile::tempdir()?;
    let ca = dir.path().join("ca");
    let server = rlhf_proto::certs::issue(&ca, "etcd", &["127.0.0.1".into()], 1)?;
    let client = rlhf_proto::certs::issue(&ca, "client", &["rlhf".into()], 1)?;
    let etcd = LocalEtcd::start_tls(&server.ca_cert, &server.cert, &server.key)?;
    let endpoints = [etcd.endpoint().to_string()];
    let tls = Tls::load(&client.ca_cert, Some((&client.cert, &client.key)), None)?;
    let m = EtcdMembership::connect(&endpoints, "/tls", CONNECT, Some(&tls)).await?;
    let m: Arc<dyn Membership> = Arc::new(m);
    let r = Registration::start(m.clone(), Role::Scorer, "s", "https://h:1", CONNECT).await?;
    assert_eq!(m.members(Role::Scorer).await?.len(), 1);
    r.leave().await?;

    let short = Duration::from_secs(3);
    let ca_only = Tls::load(&client.ca_cert, None, None)?;
    let e = EtcdMembership::connect(&endpoints, "/tls", short, Some(&ca_only))
        .await
        .err()
        .ok_or("etcd took a client without a certificate")?;
    assert!(e.to_string().contains(etcd.endpoint()), "{e}");
    let other = rlhf_proto::certs::issue(&dir.path().join("other"), "c", &["x".into()], 1)?;
    let stranger = Tls::load(&other.ca_cert, Some((&other.cert, &other.key)), None)?;
    EtcdMembership::connect(&endpoints, "/tls", short, Some(&stranger))
        .await
        .err()
        .ok_or("a client of another CA reached etcd")?;
    // Plain HTTP/2 to the TLS port fails too.
    EtcdMembership::connect(&endpoints, "/tls", short, None)
        .await
        .err()
        .ok_or("a plaintext client reached etcd")?;
    Ok(())
}

/// The run's end mark: written after a revision read before it, and per prefix.
#[tokio::test]
async fn a_run_end_mark_is_newer_than_the_revision_before_it() -> Result {
    let etcd = LocalEtcd::start()?;
    let m = connect(&etcd, "/test/end").await?;
    let before = m.revision().await?;
    assert_eq!(m.run_end().await?, None);
    m.mark_run_ended("2 iterations").await?;
    let (at, note) = m.run_end().await?.ok_or("no mark")?;
    assert!(at > before, "{at} <= {before}");
    assert_eq!(note, "2 iterations");
    let after = m.revision().await?;
    assert!(after >= at);
    // Another prefix is another run.
    let other = connect(&etcd, "/test/other").await?;
    assert_eq!(other.run_end().await?, None);
    m.mark_run_ended("4 iterations").await?;
    let (again, note) = m.run_end().await?.ok_or("no mark")?;
    assert!(again > after);
    assert_eq!(note, "4 iterations");
    Ok(())
}
