//! The `users` queries, written once and run on PostgreSQL or SQLite through
//! [`service_kit::with_conn!`].

use std::sync::Arc;

use diesel::{
    AsChangeset, ExpressionMethods, Insertable, OptionalExtension, QueryDsl, Queryable,
    QueryableByName, Selectable, SelectableHelper,
};
use diesel_async::RunQueryDsl;
use service_kit::db::{Cached, Database, DbError};
use wxmp_proto::user::v1 as pb;

use crate::{
    schema::users,
    writes::{Coalescer, DEFAULT_WRITE_WORKERS, WriteBatches},
};

/// A row of `users` (by name too: the batched profile UPDATE is written in SQL).
#[derive(Clone, Debug, PartialEq, Eq, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = users)]
pub struct User {
    pub id: i64,
    pub app_id: String,
    pub openid: String,
    pub unionid: String,
    pub nickname: String,
    pub avatar_url: String,
    pub gender: i32,
    pub language: String,
    pub city: String,
    pub province: String,
    pub country: String,
    pub phone: String,
    pub phone_country_code: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub phone_number: String,
}

impl From<User> for pb::User {
    fn from(u: User) -> Self {
        Self {
            id: u.id,
            app_id: u.app_id,
            openid: u.openid,
            unionid: u.unionid,
            nickname: u.nickname,
            avatar_url: u.avatar_url,
            gender: u.gender,
            language: u.language,
            city: u.city,
            province: u.province,
            country: u.country,
            phone: u.phone,
            phone_country_code: u.phone_country_code,
            created_at: u.created_at,
            updated_at: u.updated_at,
            phone_number: u.phone_number,
        }
    }
}

#[derive(Insertable)]
#[diesel(table_name = users)]
struct NewUser<'a> {
    app_id: &'a str,
    openid: &'a str,
    unionid: &'a str,
    created_at: i64,
    updated_at: i64,
}

/// The profile fields a decrypted `wx.getUserInfo` payload sets, in one UPDATE.
#[derive(Clone, Debug, Default, PartialEq, Eq, AsChangeset)]
#[diesel(table_name = users)]
pub struct ProfileChanges {
    pub nickname: String,
    pub avatar_url: String,
    pub gender: i32,
    pub language: String,
    pub city: String,
    pub province: String,
    pub country: String,
    /// `None` leaves the stored unionid alone (the payload carried none).
    pub unionid: Option<String>,
}

/// The phone fields of a decrypted `getPhoneNumber` payload.
#[derive(Clone, Debug, Default, PartialEq, Eq, AsChangeset)]
#[diesel(table_name = users)]
pub struct PhoneChanges {
    /// purePhoneNumber.
    pub phone: String,
    pub phone_country_code: String,
    /// phoneNumber (with the country code for foreign numbers).
    pub phone_number: String,
}

/// Who an update is for: the authenticated principal. The row must match all three, so a
/// principal cannot write to a user of another app or openid.
#[derive(Clone, Copy, Debug)]
pub struct Owner<'a> {
    pub user_id: i64,
    pub app_id: &'a str,
    pub openid: &'a str,
}

/// Access to the `users` table.
#[derive(Clone, Debug)]
pub struct Users {
    db: Database,
    /// Profile updates on PostgreSQL, coalesced (see `writes.rs`); `None` runs each alone.
    writes: Option<Arc<Coalescer>>,
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

impl Users {
    /// On PostgreSQL, profile updates are coalesced by [`DEFAULT_WRITE_WORKERS`] tasks,
    /// started by the first update.
    pub fn new(db: Database) -> Self {
        Self::with_write_workers(db, DEFAULT_WRITE_WORKERS)
    }

    /// `workers` tasks coalesce profile updates on PostgreSQL; with 0 (and always on SQLite)
    /// each update is its own statement.
    pub fn with_write_workers(db: Database, workers: u32) -> Self {
        let writes = Coalescer::new(&db, workers).map(Arc::new);
        Self { db, writes }
    }

    /// What the profile write coalescer has done so far (all zero without one).
    pub fn write_batches(&self) -> WriteBatches {
        self.writes
            .as_ref()
            .map_or_else(WriteBatches::default, |w| w.batches())
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// The user of (app_id, openid), created when absent; `true` when this call created it.
    ///
    /// Returning users are the common case, so the row is read first: one round trip. A new
    /// user costs an `INSERT ... ON CONFLICT DO NOTHING` more, which lets the unique key decide
    /// between concurrent first logins: exactly one insert returns a row, the others read the
    /// winner's row.
    pub async fn ensure(
        &self,
        app_id: &str,
        openid: &str,
        unionid: &str,
    ) -> Result<(User, bool), DbError> {
        let ts = now();
        if let Some(existing) = self.find(app_id, openid).await? {
            return Ok((self.learn_unionid(existing, unionid, ts).await?, false));
        }
        let new = NewUser {
            app_id,
            openid,
            unionid,
            created_at: ts,
            updated_at: ts,
        };
        let inserted: Option<User> = service_kit::with_conn!(&self.db, |conn| {
            diesel::insert_into(users::table)
                .values(&new)
                .on_conflict((users::app_id, users::openid))
                .do_nothing()
                .returning(User::as_returning())
                .get_result(conn)
                .await
                .optional()
        })?;
        if let Some(user) = inserted {
            return Ok((user, true));
        }
        // A concurrent first login of the same user inserted the row between our two queries.
        let existing = self
            .find(app_id, openid)
            .await?
            .ok_or(DbError::Query(diesel::result::Error::NotFound))?;
        Ok((self.learn_unionid(existing, unionid, ts).await?, false))
    }

    async fn find(&self, app_id: &str, openid: &str) -> Result<Option<User>, DbError> {
        Ok(service_kit::with_conn!(&self.db, |conn| {
            users::table
                .filter(users::app_id.eq(app_id))
                .filter(users::openid.eq(openid))
                .select(User::as_select())
                .first(conn)
                .await
                .optional()
        })?)
    }

    /// WeChat sent a unionid we did not know yet (the app was bound to an open platform
    /// account after the user's first login): store it. Otherwise the row is answered as is.
    async fn learn_unionid(&self, existing: User, unionid: &str, ts: i64) -> Result<User, DbError> {
        if unionid.is_empty() || existing.unionid == unionid {
            return Ok(existing);
        }
        let updated: Option<User> = service_kit::with_conn!(&self.db, |conn| {
            Cached(
                diesel::update(users::table.filter(users::id.eq(existing.id)))
                    .set((users::unionid.eq(unionid), users::updated_at.eq(ts)))
                    .returning(User::as_returning()),
            )
            .get_result(conn)
            .await
            .optional()
        })?;
        Ok(updated.unwrap_or(existing))
    }

    /// The user with this id, if any.
    pub async fn get(&self, user_id: i64) -> Result<Option<User>, DbError> {
        let user = service_kit::with_conn!(&self.db, |conn| {
            users::table
                .find(user_id)
                .select(User::as_select())
                .first(conn)
                .await
                .optional()
        })?;
        Ok(user)
    }

    /// Stores a decrypted profile; `None` when no row matches `owner`. On PostgreSQL it shares
    /// one statement and one commit with the updates queued beside it.
    pub async fn update_profile(
        &self,
        owner: Owner<'_>,
        changes: &ProfileChanges,
    ) -> Result<Option<User>, DbError> {
        let ts = now();
        match &self.writes {
            Some(writes) => writes.update(owner, changes, ts).await,
            None => update_profile_alone(&self.db, owner, changes, ts).await,
        }
    }

    /// Stores a decrypted phone number; `None` when no row matches `owner`.
    pub async fn update_phone(
        &self,
        owner: Owner<'_>,
        changes: &PhoneChanges,
    ) -> Result<Option<User>, DbError> {
        let ts = now();
        let user = service_kit::with_conn!(&self.db, |conn| {
            // Cached: diesel would prepare (parse, plan) this UPDATE anew every time.
            Cached(
                diesel::update(
                    users::table
                        .filter(users::id.eq(owner.user_id))
                        .filter(users::app_id.eq(owner.app_id))
                        .filter(users::openid.eq(owner.openid)),
                )
                .set((changes, users::updated_at.eq(ts)))
                .returning(User::as_returning()),
            )
            .get_result(conn)
            .await
            .optional()
        })?;
        Ok(user)
    }
}

/// One profile update in its own statement: on SQLite, and for each row of a batch that failed.
pub(crate) async fn update_profile_alone(
    db: &Database,
    owner: Owner<'_>,
    changes: &ProfileChanges,
    ts: i64,
) -> Result<Option<User>, DbError> {
    let user = service_kit::with_conn!(db, |conn| {
        // Cached: diesel would prepare (parse, plan) this UPDATE anew every time.
        Cached(
            diesel::update(
                users::table
                    .filter(users::id.eq(owner.user_id))
                    .filter(users::app_id.eq(owner.app_id))
                    .filter(users::openid.eq(owner.openid)),
            )
            .set((changes, users::updated_at.eq(ts)))
            .returning(User::as_returning()),
        )
        .get_result(conn)
        .await
        .optional()
    })?;
    Ok(user)
}
