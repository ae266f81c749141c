//! The profile write coalescer, on PostgreSQL (SQLite runs each update alone; the service
//! cases cover both): concurrent updates share statements, every caller gets its own row, one
//! user's updates apply in arrival order, and a mismatched owner or a row PostgreSQL rejects
//! touches only its own caller.
//!
//! The cases that count statements run on a current-thread runtime: every update is queued
//! (on its first poll) before a worker runs, so the batches are known in advance.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    time::{Duration, Instant},
};

use diesel::{QueryableByName, sql_types::BigInt};
use diesel_async::RunQueryDsl;
use futures::future::join_all;
use service_kit::db::{Database, DbError, PoolOptions};
use tokio::task::JoinSet;
use user_service::{Owner, ProfileChanges, User, Users, WriteBatches};

use crate::helpers::*;

fn changes(nickname: &str) -> ProfileChanges {
    ProfileChanges {
        nickname: nickname.to_owned(),
        avatar_url: format!("https://thirdwx.qlogo.cn/{nickname}"),
        gender: 1,
        language: "zh_CN".into(),
        city: "Hangzhou".into(),
        province: "Zhejiang".into(),
        country: "CN".into(),
        unionid: None,
    }
}

fn owner(user: &User) -> Owner<'_> {
    Owner {
        user_id: user.id,
        app_id: &user.app_id,
        openid: &user.openid,
    }
}

/// `n` users who logged in once (`o-0`, `o-1`, …).
async fn logged_in(users: &Users, n: usize) -> Vec<User> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(users.ensure(APP, &format!("o-{i}"), "").await.unwrap().0);
    }
    out
}

/// `answer` is `user` with `changes` stored, and nothing else changed.
fn assert_stored(answer: &User, user: &User, changes: &ProfileChanges) {
    let expected = User {
        nickname: changes.nickname.clone(),
        avatar_url: changes.avatar_url.clone(),
        gender: changes.gender,
        language: changes.language.clone(),
        city: changes.city.clone(),
        province: changes.province.clone(),
        country: changes.country.clone(),
        updated_at: answer.updated_at,
        ..user.clone()
    };
    assert_eq!(answer, &expected);
}

type Answer = Result<Option<User>, DbError>;
type Update<'a> = Pin<Box<dyn Future<Output = Answer> + 'a>>;

/// Queues the updates in this order (each on its first poll), then awaits them all.
async fn in_order(mut updates: Vec<Update<'_>>) -> Vec<Answer> {
    for update in &mut updates {
        assert!(
            futures::poll!(update.as_mut()).is_pending(),
            "answered before any worker ran"
        );
    }
    join_all(updates).await
}

fn updates<'a>(users: &'a Users, planned: &'a [(User, ProfileChanges)]) -> Vec<Update<'a>> {
    planned
        .iter()
        .map(|(user, changes)| Box::pin(users.update_profile(owner(user), changes)) as Update<'_>)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_answer_each_caller_its_own_row() {
    let db = fresh_db(Backend::Postgres).await;
    let users = Users::new(db.db.clone());
    let people = logged_in(&users, 50).await;

    // 200 callers at once, four per user, each with its own nickname.
    let mut callers = JoinSet::new();
    for round in 0..4 {
        for user in &people {
            let (users, user) = (users.clone(), user.clone());
            callers.spawn(async move {
                let changes = changes(&format!("{} #{round}", user.openid));
                let answer = users
                    .update_profile(owner(&user), &changes)
                    .await
                    .unwrap()
                    .expect("the caller's own row");
                assert_stored(&answer, &user, &changes);
                answer
            });
        }
    }
    let mut answered: HashMap<i64, Vec<User>> = HashMap::new();
    while let Some(answer) = callers.join_next().await {
        let answer = answer.unwrap();
        answered.entry(answer.id).or_default().push(answer);
    }

    for user in &people {
        let stored = users.get(user.id).await.unwrap().unwrap();
        let answers = &answered[&user.id];
        assert_eq!(answers.len(), 4);
        assert!(
            answers.contains(&stored),
            "the stored row {stored:?} is one a caller was answered"
        );
    }
    let batches = users.write_batches();
    assert_eq!(batches.rows, 200, "{batches:?}");
    assert!(
        batches.largest > 1,
        "no update shared a statement: {batches:?}"
    );
    assert!(batches.statements < 200, "{batches:?}");
    assert_eq!(batches.retried_alone, 0, "{batches:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn one_users_updates_apply_in_arrival_order() {
    let db = fresh_db(Backend::Postgres).await;
    let users = Users::with_write_workers(db.db.clone(), 2);
    let people = logged_in(&users, 50).await;

    // Four rounds of the 50 users, queued in this order.
    let planned: Vec<(User, ProfileChanges)> = (0..4)
        .flat_map(|round| {
            people
                .iter()
                .map(move |u| (u.clone(), changes(&format!("{} #{round}", u.openid))))
        })
        .collect();
    let answers = in_order(updates(&users, &planned)).await;

    let mut last_answered = HashMap::new();
    for ((user, changes), answer) in planned.iter().zip(answers) {
        let answer = answer.unwrap().expect("the caller's own row");
        assert_stored(&answer, user, changes);
        last_answered.insert(user.id, answer);
    }
    for user in &people {
        assert_eq!(
            users.get(user.id).await.unwrap().unwrap(),
            last_answered[&user.id],
            "the last update to arrive is the one stored"
        );
    }
    // Users go to the worker of their id's parity. Each worker's first batch holds its users'
    // first updates, and so on: four statements each, as large as its share of the users.
    let even = people.iter().filter(|u| u.id % 2 == 0).count() as u64;
    assert_eq!(
        users.write_batches(),
        WriteBatches {
            statements: 8,
            rows: 200,
            largest: even.max(50 - even),
            retried_alone: 0,
        }
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_mismatched_owner_answers_none_beside_stored_rows() {
    let db = fresh_db(Backend::Postgres).await;
    let users = Users::with_write_workers(db.db.clone(), 1);
    let people = logged_in(&users, 10).await;
    let mut planned: Vec<(User, ProfileChanges)> = people
        .iter()
        .map(|u| (u.clone(), changes(&format!("{} new", u.openid))))
        .collect();
    // Row 5's id with another openid, row 7's with another app: neither matches a row.
    planned[5].0.openid = "o-nobody".into();
    planned[7].0.app_id = OTHER_APP.into();

    let answers = in_order(updates(&users, &planned)).await;
    for (i, ((user, changes), answer)) in planned.iter().zip(answers).enumerate() {
        let answer = answer.unwrap();
        if i == 5 || i == 7 {
            assert_eq!(answer, None, "update {i} matched no row");
            assert_eq!(users.get(user.id).await.unwrap().unwrap(), people[i]);
        } else {
            let answer = answer.expect("the caller's own row");
            assert_stored(&answer, user, changes);
            assert_eq!(users.get(user.id).await.unwrap().unwrap(), answer);
        }
    }
    assert_eq!(
        users.write_batches(),
        WriteBatches {
            statements: 1,
            rows: 10,
            largest: 10,
            retried_alone: 0,
        },
        "all ten in one statement"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_row_postgresql_rejects_fails_only_its_caller() {
    let db = fresh_db(Backend::Postgres).await;
    let users = Users::with_write_workers(db.db.clone(), 1);
    let people = logged_in(&users, 10).await;
    let mut planned: Vec<(User, ProfileChanges)> = people
        .iter()
        .map(|u| (u.clone(), changes(&format!("{} new", u.openid))))
        .collect();
    // PostgreSQL text holds no NUL: the whole batch statement fails on this row.
    planned[3].1.nickname = "bad\0nickname".into();

    let answers = in_order(updates(&users, &planned)).await;
    for (i, ((user, changes), answer)) in planned.iter().zip(answers).enumerate() {
        if i == 3 {
            assert!(
                matches!(answer, Err(DbError::Query(_))),
                "the bad row's caller gets its error: {answer:?}"
            );
            assert_eq!(users.get(user.id).await.unwrap().unwrap(), people[i]);
        } else {
            let answer = answer.unwrap().expect("the caller's own row");
            assert_stored(&answer, user, changes);
            assert_eq!(users.get(user.id).await.unwrap().unwrap(), answer);
        }
    }
    assert_eq!(
        users.write_batches(),
        WriteBatches {
            statements: 1,
            rows: 10,
            largest: 10,
            retried_alone: 1,
        },
        "one batch, then each row alone"
    );

    // The worker goes on.
    let fixed = changes("good nickname");
    let answer = users
        .update_profile(owner(&people[3]), &fixed)
        .await
        .unwrap()
        .unwrap();
    assert_stored(&answer, &people[3], &fixed);
    assert_eq!(users.write_batches().statements, 2);
}

#[tokio::test(flavor = "current_thread")]
async fn a_caller_that_gave_up_is_skipped_and_the_worker_goes_on() {
    let db = fresh_db(Backend::Postgres).await;
    let users = Users::with_write_workers(db.db.clone(), 1);
    let people = logged_in(&users, 2).await;
    let dropped = changes("never stored");
    {
        let mut gone = Box::pin(users.update_profile(owner(&people[0]), &dropped));
        assert!(futures::poll!(gone.as_mut()).is_pending(), "queued");
        // Dropped here, before any worker ran: the caller's deadline passed.
    }
    let kept = changes("stored");
    let answer = users
        .update_profile(owner(&people[1]), &kept)
        .await
        .unwrap()
        .unwrap();
    assert_stored(&answer, &people[1], &kept);
    assert_eq!(
        users.get(people[0].id).await.unwrap().unwrap(),
        people[0],
        "an update whose caller gave up before its batch is not written"
    );
    assert_eq!(users.write_batches().rows, 1);
}

#[test]
fn a_stopped_worker_answers_an_error_not_a_hang() {
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    let first = runtime();
    let (_db, users, user) = first.block_on(async {
        let db = fresh_db(Backend::Postgres).await;
        let users = Users::with_write_workers(db.db.clone(), 1);
        let user = logged_in(&users, 1).await.remove(0);
        // Starts the worker on this runtime.
        let stored = users
            .update_profile(owner(&user), &changes("first"))
            .await
            .unwrap();
        assert!(stored.is_some());
        (db, users, user)
    });
    // Shutting the runtime down stops its tasks, the worker with them.
    drop(first);

    let answer = runtime().block_on(async {
        tokio::time::timeout(
            Duration::from_secs(10),
            users.update_profile(owner(&user), &changes("second")),
        )
        .await
    });
    assert!(
        matches!(answer, Ok(Err(DbError::Unavailable(_)))),
        "{answer:?}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn the_batch_statement_is_prepared_once_per_connection() {
    let db = fresh_db(Backend::Postgres).await;
    // One connection: every batch (and the check below) runs on it.
    let one = Database::connect(
        &db.url,
        PoolOptions {
            max_size: 1,
            ..PoolOptions::default()
        },
    )
    .unwrap();
    let users = Users::with_write_workers(one.clone(), 1);
    let people = logged_in(&users, 8).await;
    for size in [3, 8, 1] {
        let planned: Vec<(User, ProfileChanges)> = people[..size]
            .iter()
            .map(|u| (u.clone(), changes(&format!("{} of {size}", u.openid))))
            .collect();
        for answer in in_order(updates(&users, &planned)).await {
            assert!(matches!(answer, Ok(Some(_))), "{answer:?}");
        }
    }
    assert_eq!(users.write_batches().statements, 3);

    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let Database::Postgres(pool) = &one else {
        panic!("a PostgreSQL pool")
    };
    let mut conn = pool.get().await.unwrap();
    // Named (cached) statements only; an unnamed one is parsed anew each time.
    let prepared: Count = diesel::sql_query(
        "SELECT count(*) AS n FROM pg_prepared_statements WHERE statement LIKE 'UPDATE users AS u %'",
    )
    .get_result(&mut *conn)
    .await
    .unwrap();
    assert_eq!(prepared.n, 1, "three batch sizes, one prepared statement");
}

/// A load probe, not a test: 8, 16 and 32 callers each updating their own user for 5 s, with 0
/// (each update alone), 1, 2 and 4 workers. Run with
/// `cargo test -p user-service --test user_service write_load -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "prints updates/s; asserts nothing about speed"]
async fn write_load() {
    let db = fresh_db(Backend::Postgres).await;
    let people = logged_in(&Users::new(db.db.clone()), 32).await;
    for callers in [8, 16, 32] {
        for workers in [0, 1, 2, 4] {
            let users = Users::with_write_workers(db.db.clone(), workers);
            let (pg_before, me_before) = cpu_seconds();
            let start = Instant::now();
            let end = start + Duration::from_secs(5);
            let mut tasks = JoinSet::new();
            for user in people[..callers].iter().cloned() {
                let users = users.clone();
                tasks.spawn(async move {
                    let mut n = 0u64;
                    while Instant::now() < end {
                        let changes = changes(&format!("{} {n}", user.openid));
                        users
                            .update_profile(owner(&user), &changes)
                            .await
                            .unwrap()
                            .unwrap();
                        n += 1;
                    }
                    n
                });
            }
            let mut total = 0;
            while let Some(n) = tasks.join_next().await {
                total += n.unwrap();
            }
            let secs = start.elapsed().as_secs_f64();
            let (pg_after, me_after) = cpu_seconds();
            let b = users.write_batches();
            let per_update = |cpu: f64| cpu * 1000.0 / total.max(1) as f64;
            println!(
                "callers {callers:>2}, workers {workers}: {:>6.0} updates/s, {:.3} PostgreSQL CPU ms and {:.3} test CPU ms per update, {} statements, {:.1} rows each, largest {}",
                total as f64 / secs,
                per_update(pg_after - pg_before),
                per_update(me_after - me_before),
                b.statements,
                b.rows as f64 / b.statements.max(1) as f64,
                b.largest
            );
        }
    }
}

/// CPU seconds used so far by the processes named `postgres` and by this one (Linux's /proc,
/// 100 ticks a second; zeros elsewhere).
fn cpu_seconds() -> (f64, f64) {
    let seconds = |stat: &str| -> Option<f64> {
        // utime and stime: fields 14 and 15, the 12th and 13th after the ")" ending the name.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        Some(ticks / 100.0)
    };
    let mut postgres = 0.0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        if stat.contains(" (postgres) ") {
            postgres += seconds(&stat).unwrap_or(0.0);
        }
    }
    let me = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    (postgres, seconds(&me).unwrap_or(0.0))
}
