//! Group commit for profile updates on PostgreSQL (issue 29): concurrent `update_profile` calls
//! are coalesced into one `UPDATE … FROM UNNEST(…)`, so PostgreSQL pays one statement and one
//! commit for many updates instead of one each.
//!
//! Each update goes to the worker of its user id (id modulo the number of workers), so one
//! user's updates are run by one worker, in arrival order, with no coordination between
//! workers. A free worker takes whatever is queued right now (no timer: an idle service adds
//! no latency), at most [`MAX_BATCH`] rows, and never two updates of one user in one batch
//! (`UPDATE … FROM` with two source rows for one target applies only one of them): a later
//! update of a user already in the batch waits for the next one.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
};

use diesel::sql_types::{Array, BigInt, Integer, Nullable, Text};
use diesel_async::{AsyncPgConnection, pooled_connection::deadpool::Pool};
use service_kit::db::{Cached, Database, DbError};
use tokio::sync::{mpsc, oneshot};

use crate::store::{self, Owner, ProfileChanges, User};

/// Most rows in one statement.
pub const MAX_BATCH: usize = 64;

/// Worker tasks of [`Users::new`](crate::Users::new) and `USER_WRITE_WORKERS`. One: in the
/// load probe (`write_load`) one worker gave the largest batches and the least PostgreSQL CPU
/// per update at 8, 16 and 32 callers; more split the same callers into smaller batches (a
/// user's updates always go to the same worker).
pub const DEFAULT_WRITE_WORKERS: u32 = 1;

/// Rows per batch statement.
const BATCH_SIZE_METRIC: &str = "wxmp_user_write_batch_size";

/// One statement for any batch size: the rows travel as one array per column, so the text
/// (and its prepared form, one per connection) never varies. Only `unionid` may be NULL: the
/// payload carried none and the stored one stays.
const UPDATE_BATCH: &str = "\
UPDATE users AS u SET nickname = v.nickname, avatar_url = v.avatar_url, gender = v.gender, \
language = v.language, city = v.city, province = v.province, country = v.country, \
unionid = COALESCE(v.unionid, u.unionid), updated_at = v.updated_at \
FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::integer[], \
$7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::bigint[]) \
AS v(id, app_id, openid, nickname, avatar_url, gender, language, city, province, country, \
unionid, updated_at) \
WHERE u.id = v.id AND u.app_id = v.app_id AND u.openid = v.openid \
RETURNING u.id, u.app_id, u.openid, u.unionid, u.nickname, u.avatar_url, u.gender, \
u.language, u.city, u.province, u.country, u.phone, u.phone_country_code, u.created_at, \
u.updated_at, u.phone_number";

type Answer = Result<Option<User>, DbError>;

/// One queued update and where its answer goes.
struct Write {
    user_id: i64,
    app_id: String,
    openid: String,
    changes: ProfileChanges,
    updated_at: i64,
    answer: oneshot::Sender<Answer>,
}

impl Write {
    fn owner(&self) -> Owner<'_> {
        Owner {
            user_id: self.user_id,
            app_id: &self.app_id,
            openid: &self.openid,
        }
    }
}

/// What the coalescer has done so far (for tests and the load probe; production reads the
/// `wxmp_user_write_batch_size` histogram).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteBatches {
    /// Batch statements run (each one commit).
    pub statements: u64,
    /// Rows sent in them.
    pub rows: u64,
    /// Rows of the largest one.
    pub largest: u64,
    /// Batches whose statement failed, so each row was run alone.
    pub retried_alone: u64,
}

#[derive(Debug, Default)]
struct Counters {
    statements: AtomicU64,
    rows: AtomicU64,
    largest: AtomicU64,
    retried_alone: AtomicU64,
}

impl Counters {
    fn statement(&self, rows: usize) {
        let rows = u64::try_from(rows).unwrap_or(u64::MAX);
        self.statements.fetch_add(1, Ordering::Relaxed);
        self.rows.fetch_add(rows, Ordering::Relaxed);
        self.largest.fetch_max(rows, Ordering::Relaxed);
        metrics::histogram!(BATCH_SIZE_METRIC).record(rows as f64);
    }
}

/// The queues of the workers, started on first use (inside the caller's runtime).
pub(crate) struct Coalescer {
    db: Database,
    pool: Pool<AsyncPgConnection>,
    workers: usize,
    queues: OnceLock<Vec<mpsc::UnboundedSender<Write>>>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for Coalescer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coalescer")
            .field("workers", &self.workers)
            .field("started", &self.queues.get().is_some())
            .finish_non_exhaustive()
    }
}

fn closed() -> DbError {
    DbError::Unavailable("the profile write queue is closed".into())
}

impl Coalescer {
    /// `None` on SQLite (one connection, one writer: nothing to share) and for 0 workers.
    pub(crate) fn new(db: &Database, workers: u32) -> Option<Self> {
        match db {
            Database::Postgres(pool) if workers > 0 => Some(Self {
                db: db.clone(),
                pool: pool.clone(),
                workers: usize::try_from(workers).unwrap_or(1),
                queues: OnceLock::new(),
                counters: Arc::default(),
            }),
            _ => None,
        }
    }

    pub(crate) fn batches(&self) -> WriteBatches {
        let c = &self.counters;
        WriteBatches {
            statements: c.statements.load(Ordering::Relaxed),
            rows: c.rows.load(Ordering::Relaxed),
            largest: c.largest.load(Ordering::Relaxed),
            retried_alone: c.retried_alone.load(Ordering::Relaxed),
        }
    }

    fn queues(&self) -> Result<&[mpsc::UnboundedSender<Write>], DbError> {
        if let Some(queues) = self.queues.get() {
            return Ok(queues);
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| DbError::Unavailable("no tokio runtime for the write queue".into()))?;
        Ok(self.queues.get_or_init(|| {
            (0..self.workers)
                .map(|_| {
                    // Unbounded: every queued update has a caller awaiting its answer, so the
                    // queue never holds more than the requests in flight.
                    let (tx, rx) = mpsc::unbounded_channel();
                    let worker = Worker {
                        db: self.db.clone(),
                        pool: self.pool.clone(),
                        counters: self.counters.clone(),
                    };
                    // Ends when the last `Users` clone (and so every sender) is gone.
                    drop(runtime.spawn(worker.run(rx)));
                    tx
                })
                .collect()
        }))
    }

    /// Queues the update and waits for its batch. Queued on the first poll, before any await:
    /// the arrival order is the order the calls were first polled in.
    pub(crate) async fn update(
        &self,
        owner: Owner<'_>,
        changes: &ProfileChanges,
        updated_at: i64,
    ) -> Result<Option<User>, DbError> {
        let queues = self.queues()?;
        let workers = i64::try_from(queues.len()).unwrap_or(1).max(1);
        let shard = usize::try_from(owner.user_id.rem_euclid(workers)).unwrap_or(0);
        let queue = queues.get(shard).ok_or_else(closed)?;
        let (answer, answered) = oneshot::channel();
        queue
            .send(Write {
                user_id: owner.user_id,
                app_id: owner.app_id.to_owned(),
                openid: owner.openid.to_owned(),
                changes: changes.clone(),
                updated_at,
                answer,
            })
            .map_err(|_| closed())?;
        // A dropped answer means the worker was stopped (the runtime is shutting down).
        answered.await.map_err(|_| closed())?
    }
}

struct Worker {
    db: Database,
    pool: Pool<AsyncPgConnection>,
    counters: Arc<Counters>,
}

/// Why a batch statement gave no rows.
enum Failure {
    /// No connection: the statement never ran, and running rows alone would not get one
    /// either.
    NoConnection(String),
    /// The statement failed, maybe because of one row.
    Statement(DbError),
}

impl Worker {
    async fn run(self, mut queue: mpsc::UnboundedReceiver<Write>) {
        // Arrived, but a batch already held an update of the same user.
        let mut held = VecDeque::new();
        while let Some(batch) = next_batch(&mut queue, &mut held).await {
            self.write(batch).await;
        }
    }

    async fn write(&self, mut batch: Vec<Write>) {
        // In id order, so two replicas' batches tend to lock shared rows in the same order; a
        // deadlock PostgreSQL breaks fails one statement, whose rows then run alone.
        batch.sort_unstable_by_key(|w| w.user_id);
        self.counters.statement(batch.len());
        match self.update_all(&batch).await {
            Ok(rows) => {
                let mut by_id: HashMap<i64, User> = rows.into_iter().map(|u| (u.id, u)).collect();
                for write in batch {
                    // The caller may have given up (timeout, cancel): nothing to tell.
                    let _ = write.answer.send(Ok(by_id.remove(&write.user_id)));
                }
            }
            Err(Failure::NoConnection(e)) => {
                for write in batch {
                    let _ = write.answer.send(Err(DbError::Unavailable(e.clone())));
                }
            }
            Err(Failure::Statement(e)) => {
                tracing::warn!(error = %e, rows = batch.len(), "batched profile update failed; each row runs alone");
                self.counters.retried_alone.fetch_add(1, Ordering::Relaxed);
                self.write_alone(batch).await;
            }
        }
    }

    async fn update_all(&self, batch: &[Write]) -> Result<Vec<User>, Failure> {
        // Here only: its `load` would shadow the atomics' in this module.
        use diesel_async::RunQueryDsl;

        let mut conn = self
            .pool
            .get()
            .await
            .map_err(|e| Failure::NoConnection(e.to_string()))?;
        let column = |f: fn(&Write) -> &str| batch.iter().map(f).collect::<Vec<_>>();
        let query = diesel::sql_query(UPDATE_BATCH)
            .bind::<Array<BigInt>, _>(batch.iter().map(|w| w.user_id).collect::<Vec<_>>())
            .bind::<Array<Text>, _>(column(|w| &w.app_id))
            .bind::<Array<Text>, _>(column(|w| &w.openid))
            .bind::<Array<Text>, _>(column(|w| &w.changes.nickname))
            .bind::<Array<Text>, _>(column(|w| &w.changes.avatar_url))
            .bind::<Array<Integer>, _>(batch.iter().map(|w| w.changes.gender).collect::<Vec<_>>())
            .bind::<Array<Text>, _>(column(|w| &w.changes.language))
            .bind::<Array<Text>, _>(column(|w| &w.changes.city))
            .bind::<Array<Text>, _>(column(|w| &w.changes.province))
            .bind::<Array<Text>, _>(column(|w| &w.changes.country))
            .bind::<Array<Nullable<Text>>, _>(
                batch
                    .iter()
                    .map(|w| w.changes.unionid.as_deref())
                    .collect::<Vec<_>>(),
            )
            .bind::<Array<BigInt>, _>(batch.iter().map(|w| w.updated_at).collect::<Vec<_>>());
        // Cached: prepared once per connection (keyed by its text), not parsed per batch.
        Cached(query)
            .get_results::<User>(&mut *conn)
            .await
            .map_err(|e| Failure::Statement(e.into()))
    }

    /// Each row of a failed batch in its own UPDATE, at once: a row PostgreSQL rejects fails
    /// only its caller.
    async fn write_alone(&self, batch: Vec<Write>) {
        let mut alone = tokio::task::JoinSet::new();
        for write in batch {
            let db = self.db.clone();
            alone.spawn(async move {
                let stored = store::update_profile_alone(
                    &db,
                    write.owner(),
                    &write.changes,
                    write.updated_at,
                )
                .await;
                let _ = write.answer.send(stored);
            });
        }
        // Done before the next batch, which may hold later updates of these users.
        while alone.join_next().await.is_some() {}
    }
}

/// The next batch: first the updates held back from earlier batches, in arrival order, then
/// whatever is queued, up to [`MAX_BATCH`] rows and one update per user. Waits only while
/// nothing at all is queued; `None` once the queue is closed and empty.
async fn next_batch(
    queue: &mut mpsc::UnboundedReceiver<Write>,
    held: &mut VecDeque<Write>,
) -> Option<Vec<Write>> {
    let mut batch = Vec::new();
    let mut users = HashSet::new();
    let mut admit = |write: Write, batch: &mut Vec<Write>, later: &mut VecDeque<Write>| {
        if write.answer.is_closed() {
            // Its caller gave up before it was sent: not written, as it was told.
            return;
        }
        if batch.len() < MAX_BATCH && users.insert(write.user_id) {
            batch.push(write);
        } else {
            later.push_back(write);
        }
    };
    let mut later = VecDeque::new();
    for write in held.drain(..) {
        admit(write, &mut batch, &mut later);
    }
    *held = later;
    while batch.is_empty() {
        let write = queue.recv().await?;
        admit(write, &mut batch, held);
    }
    while batch.len() < MAX_BATCH {
        let Ok(write) = queue.try_recv() else { break };
        admit(write, &mut batch, held);
    }
    Some(batch)
}
