//! One connection to the store's database: SQLite (a file in HOME, the
//! default) or PostgreSQL (`--db postgres://…`, for a facility that runs
//! its server against a database it backs up and monitors).
//!
//! The store writes its SQL once, in the common subset of both, with `?N`
//! placeholders (rewritten to `$N` for PostgreSQL). Where the two differ —
//! full-text search, JSON paths, `GREATEST` — the query asks
//! [`Db::dialect`]. Values travel as [`Arg`]s and come back through [`Row`],
//! so integers are `i64` on both sides and a NULL needs no type.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use anyhow::Context;

/// Where the store lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    Sqlite(PathBuf),
    /// A `postgres://` or `postgresql://` URL.
    Postgres(String),
}

impl Location {
    /// A URL is PostgreSQL, anything else a SQLite file.
    pub fn parse(s: &str) -> Location {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Location::Postgres(s.to_string())
        } else {
            Location::Sqlite(PathBuf::from(s))
        }
    }
}

/// How the location is shown (logs, `server.json`, errors): a password in
/// a URL is never printed.
impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Sqlite(p) => write!(f, "{}", p.display()),
            Location::Postgres(url) => f.write_str(&redact(url)),
        }
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
fn redact(url: &str) -> Cow<'_, str> {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return Cow::Borrowed(url);
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return Cow::Borrowed(url);
    };
    match rest[..at].find(':') {
        Some(colon) => Cow::Owned(format!(
            "{}{}:***{}",
            &url[..scheme_end],
            &rest[..colon],
            &rest[at..]
        )),
        None => Cow::Borrowed(url),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A statement parameter.
#[derive(Clone, Debug, PartialEq)]
pub enum Arg {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
}

macro_rules! int_arg {
    ($($t:ty),*) => {$(
        impl From<$t> for Arg {
            fn from(v: $t) -> Arg {
                Arg::Int(v as i64)
            }
        }
    )*};
}
int_arg!(i64, i32, u32, u64, usize);

impl From<bool> for Arg {
    fn from(v: bool) -> Arg {
        Arg::Int(v as i64)
    }
}
impl From<f64> for Arg {
    fn from(v: f64) -> Arg {
        Arg::Real(v)
    }
}
impl From<&str> for Arg {
    fn from(v: &str) -> Arg {
        Arg::Text(v.to_string())
    }
}
impl From<String> for Arg {
    fn from(v: String) -> Arg {
        Arg::Text(v)
    }
}
impl From<&String> for Arg {
    fn from(v: &String) -> Arg {
        Arg::Text(v.clone())
    }
}
macro_rules! word_arg {
    ($($t:ty),*) => {$(
        /// Stored as its word.
        impl From<$t> for Arg {
            fn from(v: $t) -> Arg {
                Arg::Text(v.as_str().to_string())
            }
        }
    )*};
}
word_arg!(
    crate::api::RunState,
    crate::api::AttemptState,
    crate::api::PilotState
);

macro_rules! id_arg {
    ($($t:ty),*) => {$(
        impl From<$t> for Arg {
            fn from(v: $t) -> Arg {
                Arg::Int(v.0 as i64)
            }
        }
    )*};
}
id_arg!(
    crate::api::RunId,
    crate::api::AttemptId,
    crate::api::PilotId
);

impl<T: Into<Arg>> From<Option<T>> for Arg {
    fn from(v: Option<T>) -> Arg {
        v.map_or(Arg::Null, Into::into)
    }
}
impl<T: Clone + Into<Arg>> From<&Option<T>> for Arg {
    fn from(v: &Option<T>) -> Arg {
        v.clone().map_or(Arg::Null, Into::into)
    }
}

/// `args![a, b, …]`: statement parameters from anything [`Arg`] converts.
#[macro_export]
macro_rules! args {
    ($($x:expr),* $(,)?) => {
        &[$($crate::store::Arg::from($x)),*][..]
    };
}

impl rusqlite::ToSql for Arg {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, Value, ValueRef};
        Ok(match self {
            Arg::Null => ToSqlOutput::Owned(Value::Null),
            Arg::Int(i) => ToSqlOutput::Owned(Value::Integer(*i)),
            Arg::Real(x) => ToSqlOutput::Owned(Value::Real(*x)),
            Arg::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
        })
    }
}

/// PostgreSQL infers each parameter's type from the statement; an `Arg`
/// fits whatever it inferred that it can be (a NULL fits anything), and a
/// mismatch is an error naming both.
impl tokio_postgres::types::ToSql for Arg {
    fn to_sql(
        &self,
        ty: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use tokio_postgres::types::Type;
        match (self, ty) {
            (Arg::Null, _) => Ok(tokio_postgres::types::IsNull::Yes),
            (Arg::Int(i), &Type::INT8) => i.to_sql(ty, out),
            (Arg::Int(i), &Type::INT4) => i32::try_from(*i)?.to_sql(ty, out),
            (Arg::Int(i), &Type::INT2) => i16::try_from(*i)?.to_sql(ty, out),
            (Arg::Int(i), &Type::FLOAT8) => (*i as f64).to_sql(ty, out),
            (Arg::Int(i), &Type::BOOL) => (*i != 0).to_sql(ty, out),
            (Arg::Int(i), &Type::TEXT | &Type::VARCHAR) => i.to_string().to_sql(ty, out),
            (Arg::Real(x), &Type::FLOAT8) => x.to_sql(ty, out),
            (Arg::Real(x), &Type::FLOAT4) => (*x as f32).to_sql(ty, out),
            (Arg::Text(s), &Type::TEXT | &Type::VARCHAR | &Type::BPCHAR | &Type::NAME) => {
                s.as_str().to_sql(ty, out)
            }
            (a, t) => Err(format!("cannot pass {a:?} as a PostgreSQL {t}").into()),
        }
    }

    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}

/// A column by name or position, for either database.
pub trait Col: rusqlite::RowIndex + tokio_postgres::row::RowIndex + fmt::Display + Copy {}
impl Col for usize {}
impl Col for &str {}

/// A result row.
pub enum Row<'a> {
    Sqlite(&'a rusqlite::Row<'a>),
    Postgres(&'a tokio_postgres::Row),
}

impl Row<'_> {
    pub fn opt_i64(&self, c: impl Col) -> anyhow::Result<Option<i64>> {
        match self {
            Row::Sqlite(r) => r.get(c).map_err(|e| anyhow::anyhow!("column {c}: {e}")),
            Row::Postgres(r) => {
                use tokio_postgres::types::Type;
                let ty = r
                    .columns()
                    .get(column_index(r, c)?)
                    .map(|col| col.type_().clone());
                match ty {
                    Some(Type::INT4) => Ok(r.try_get::<_, Option<i32>>(c)?.map(i64::from)),
                    Some(Type::INT2) => Ok(r.try_get::<_, Option<i16>>(c)?.map(i64::from)),
                    Some(Type::BOOL) => Ok(r.try_get::<_, Option<bool>>(c)?.map(i64::from)),
                    _ => r.try_get(c).map_err(|e| anyhow::anyhow!("column {c}: {e}")),
                }
            }
        }
    }

    pub fn i64(&self, c: impl Col) -> anyhow::Result<i64> {
        self.opt_i64(c)?
            .with_context(|| format!("column {c} is NULL"))
    }

    /// A non-negative integer (ids, counts).
    pub fn u64(&self, c: impl Col) -> anyhow::Result<u64> {
        u64::try_from(self.i64(c)?).map_err(|e| anyhow::anyhow!("column {c}: {e}"))
    }

    pub fn opt_u64(&self, c: impl Col) -> anyhow::Result<Option<u64>> {
        self.opt_i64(c)?
            .map(|x| u64::try_from(x).map_err(|e| anyhow::anyhow!("column {c}: {e}")))
            .transpose()
    }

    pub fn opt_text(&self, c: impl Col) -> anyhow::Result<Option<String>> {
        match self {
            Row::Sqlite(r) => r.get(c).map_err(|e| anyhow::anyhow!("column {c}: {e}")),
            Row::Postgres(r) => r.try_get(c).map_err(|e| anyhow::anyhow!("column {c}: {e}")),
        }
    }

    pub fn text(&self, c: impl Col) -> anyhow::Result<String> {
        self.opt_text(c)?
            .with_context(|| format!("column {c} is NULL"))
    }
}

fn column_index(r: &tokio_postgres::Row, c: impl Col) -> anyhow::Result<usize> {
    let name = c.to_string();
    if let Ok(i) = name.parse::<usize>() {
        return Ok(i);
    }
    r.columns()
        .iter()
        .position(|col| col.name() == name)
        .with_context(|| format!("no column {name}"))
}

/// A statement with its parameters, for [`Db::execute_all`].
#[derive(Clone, Debug)]
pub struct Stmt {
    pub sql: String,
    pub args: Vec<Arg>,
}

impl Stmt {
    pub fn new(sql: &str, args: &[Arg]) -> Stmt {
        Stmt {
            sql: sql.to_string(),
            args: args.to_vec(),
        }
    }
}

/// An open connection.
pub struct Db {
    conn: Conn,
}

enum Conn {
    Sqlite(rusqlite::Connection),
    Postgres(Box<Pg>),
}

/// The async client, driven by a runtime of its own: every call is one
/// `block_on`, during which the connection task runs too.
struct Pg {
    rt: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
    /// Statements prepared on this connection, by their text.
    prepared: HashMap<String, tokio_postgres::Statement>,
}

impl Pg {
    /// Prepares what is not prepared yet (all at once: one round trip).
    fn prepare(&mut self, sqls: &[&str]) -> anyhow::Result<Vec<tokio_postgres::Statement>> {
        let missing: Vec<&str> = {
            let mut m: Vec<&str> = sqls
                .iter()
                .copied()
                .filter(|s| !self.prepared.contains_key(*s))
                .collect();
            m.sort_unstable();
            m.dedup();
            m
        };
        if !missing.is_empty() {
            let client = &self.client;
            let made = self
                .rt
                .block_on(futures_util::future::join_all(missing.iter().map(
                    |sql| async move { (*sql, client.prepare(&dollar_placeholders(sql)).await) },
                )));
            for (sql, st) in made {
                let st = st.map_err(|e| failed(sql, e))?;
                self.prepared.insert(sql.to_string(), st);
            }
        }
        Ok(sqls.iter().map(|s| self.prepared[*s].clone()).collect())
    }
}

impl Db {
    pub fn sqlite(conn: rusqlite::Connection) -> Db {
        Db {
            conn: Conn::Sqlite(conn),
        }
    }

    /// Connects to PostgreSQL (TCP, or a Unix socket with `?host=/run/…`).
    /// The client's runtime refuses to start inside another: call from a
    /// plain thread or through [`blocking`].
    pub fn postgres(url: &str) -> anyhow::Result<Db> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| anyhow::anyhow!("not a PostgreSQL URL: {e}"))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (client, connection) = rt
            .block_on(config.connect(tokio_postgres::NoTls))
            .map_err(|e| anyhow::anyhow!("cannot connect: {}", with_causes(&e)))?;
        rt.spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!("PostgreSQL connection ended: {}", with_causes(&e));
            }
        });
        Ok(Db {
            conn: Conn::Postgres(Box::new(Pg {
                rt,
                client,
                prepared: HashMap::new(),
            })),
        })
    }

    pub fn dialect(&self) -> Dialect {
        match self.conn {
            Conn::Sqlite(_) => Dialect::Sqlite,
            Conn::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Runs a statement; returns the rows it changed.
    pub fn execute(&mut self, sql: &str, args: &[Arg]) -> anyhow::Result<u64> {
        match &mut self.conn {
            Conn::Sqlite(c) => Ok(c
                .prepare_cached(sql)
                .and_then(|mut st| st.execute(rusqlite::params_from_iter(args)))
                .map_err(|e| failed(sql, e))? as u64),
            Conn::Postgres(pg) => {
                let st = pg.prepare(&[sql])?.remove(0);
                pg.rt
                    .block_on(pg.client.execute(&st, &pg_args(args)))
                    .map_err(|e| failed(sql, e))
            }
        }
    }

    /// Runs statements in order. PostgreSQL gets them all before the first
    /// answer comes back (pipelined), so a group commit of thousands of
    /// statements costs a few round trips, not one each.
    pub fn execute_all(&mut self, stmts: &[Stmt]) -> anyhow::Result<()> {
        let Conn::Postgres(pg) = &mut self.conn else {
            for s in stmts {
                self.execute(&s.sql, &s.args)?;
            }
            return Ok(());
        };
        let sqls: Vec<&str> = stmts.iter().map(|s| s.sql.as_str()).collect();
        let prepared = pg.prepare(&sqls)?;
        let client = &pg.client;
        type Pending<'a> = std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<u64, tokio_postgres::Error>> + 'a>,
        >;
        let mut pending: Vec<Pending> = stmts
            .iter()
            .zip(&prepared)
            .map(|(s, st)| Box::pin(client.execute_raw(st, s.args.iter())) as Pending)
            .collect();
        let mut done: Vec<Option<Result<u64, tokio_postgres::Error>>> =
            std::iter::repeat_with(|| None).take(stmts.len()).collect();
        pg.rt.block_on(async {
            // A request is sent when its future is first polled: once each,
            // in order, so the server gets them in order…
            std::future::poll_fn(|cx| {
                for (f, d) in pending.iter_mut().zip(done.iter_mut()) {
                    if let std::task::Poll::Ready(r) = f.as_mut().poll(cx) {
                        *d = Some(r);
                    }
                }
                std::task::Poll::Ready(())
            })
            .await;
            // …then the answers, which come in the same order.
            for (f, d) in pending.iter_mut().zip(done.iter_mut()) {
                if d.is_none() {
                    *d = Some(f.await);
                }
            }
        });
        for (s, r) in stmts.iter().zip(done) {
            r.expect("every statement answered")
                .map_err(|e| failed(&s.sql, e))?;
        }
        Ok(())
    }

    /// Runs a query and maps each row.
    pub fn query<T>(
        &mut self,
        sql: &str,
        args: &[Arg],
        mut f: impl FnMut(&Row) -> anyhow::Result<T>,
    ) -> anyhow::Result<Vec<T>> {
        match &mut self.conn {
            Conn::Sqlite(c) => {
                let mut st = c.prepare_cached(sql).map_err(|e| failed(sql, e))?;
                let mut rows = st
                    .query(rusqlite::params_from_iter(args))
                    .map_err(|e| failed(sql, e))?;
                let mut out = Vec::new();
                while let Some(r) = rows.next().map_err(|e| failed(sql, e))? {
                    out.push(f(&Row::Sqlite(r))?);
                }
                Ok(out)
            }
            Conn::Postgres(pg) => {
                let st = pg.prepare(&[sql])?.remove(0);
                let rows = pg
                    .rt
                    .block_on(pg.client.query(&st, &pg_args(args)))
                    .map_err(|e| failed(sql, e))?;
                rows.iter().map(|r| f(&Row::Postgres(r))).collect()
            }
        }
    }

    /// The first row, if any.
    pub fn query_opt<T>(
        &mut self,
        sql: &str,
        args: &[Arg],
        f: impl FnMut(&Row) -> anyhow::Result<T>,
    ) -> anyhow::Result<Option<T>> {
        Ok(self.query(sql, args, f)?.into_iter().next())
    }

    /// Exactly one row.
    pub fn query_one<T>(
        &mut self,
        sql: &str,
        args: &[Arg],
        f: impl FnMut(&Row) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        self.query_opt(sql, args, f)?
            .with_context(|| format!("{}: no row", statement(sql)))
    }

    /// Several statements without parameters (schema, transactions).
    pub fn batch(&mut self, sql: &str) -> anyhow::Result<()> {
        match &mut self.conn {
            Conn::Sqlite(c) => c.execute_batch(sql).map_err(|e| failed(sql, e)),
            Conn::Postgres(pg) => pg
                .rt
                .block_on(pg.client.batch_execute(sql))
                .map_err(|e| failed(sql, e)),
        }
    }
}

/// A database error with the statement it came from (shortened): the
/// cause is in the message itself, as callers show errors with `{}`.
fn failed(sql: &str, e: impl std::error::Error) -> anyhow::Error {
    anyhow::anyhow!("{}: {}", statement(sql), with_causes(&e))
}

/// An error and its causes on one line: PostgreSQL's errors say only "db
/// error" until their source (the server's message) is added.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

fn statement(sql: &str) -> String {
    let one_line: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut shown: String = one_line.chars().take(120).collect();
    if shown.len() < one_line.len() {
        shown.push('…');
    }
    format!("store query `{shown}`")
}

fn pg_args(args: &[Arg]) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
    args.iter()
        .map(|a| a as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect()
}

/// `?N` → `$N`, outside string literals and quoted names.
fn dollar_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quote: Option<char> = None;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if c == '?' && chars.peek().is_some_and(|d| d.is_ascii_digit()) => {
                out.push('$');
                continue;
            }
            None => {}
        }
        out.push(c);
    }
    out
}

/// Runs blocking database work from wherever it is called. PostgreSQL's
/// sync client drives its own runtime and refuses to start inside another:
/// on a multi-threaded runtime's worker the work moves off it
/// (`block_in_place`), on a single-threaded one it runs on a scoped thread.
pub fn blocking<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        Ok(_) => std::thread::scope(|s| s.spawn(f).join().expect("store thread panicked")),
        Err(_) => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_outside_quotes_become_dollars() {
        assert_eq!(
            dollar_placeholders("SELECT ?1, '?2', \"a?3\" FROM t WHERE x = ?12 AND y = ?"),
            "SELECT $1, '?2', \"a?3\" FROM t WHERE x = $12 AND y = ?"
        );
    }

    #[test]
    fn passwords_in_urls_are_never_shown() {
        let show = |s: &str| Location::parse(s).to_string();
        assert_eq!(
            show("postgres://bf:s3cret@db.example:5432/beamflow"),
            "postgres://bf:***@db.example:5432/beamflow"
        );
        assert_eq!(
            show("postgresql://bf@db/beamflow?sslmode=disable"),
            "postgresql://bf@db/beamflow?sslmode=disable"
        );
        assert_eq!(show("/var/lib/beamflow.db"), "/var/lib/beamflow.db");
        assert_eq!(
            Location::parse("state/beamflow.db"),
            Location::Sqlite("state/beamflow.db".into())
        );
    }
}
