//! PostgreSQL for tests: the server named by `SLUICE_TEST_PG_URL` (which
//! `scripts/test.sh` provides) and a fresh, uniquely named database on it per test, so
//! tests running side by side in one process never share tables.

use sqlx::Connection;

/// The PostgreSQL server URL for tests.
pub fn pg_server_url() -> String {
    std::env::var("SLUICE_TEST_PG_URL").unwrap_or_else(|_| {
        panic!(
            "SLUICE_TEST_PG_URL is not set: PostgreSQL tests need a server. \
             Run the suite with scripts/test.sh, which starts a throwaway PostgreSQL, \
             or set SLUICE_TEST_PG_URL=postgres://user@host:port/postgres"
        )
    })
}

/// Creates an empty database for one test and returns its URL.
pub async fn fresh_pg_database() -> String {
    let server = pg_server_url();
    let name = format!("sluice_test_{}", uuid::Uuid::now_v7().simple());
    let mut conn = sqlx::PgConnection::connect(&server)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test PostgreSQL at {server}: {e}"));
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create test database");
    conn.close().await.ok();
    with_database(&server, &name)
}

/// `url` with its database name replaced.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let root = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{root}/{db}?{q}"),
        None => format!("{root}/{db}"),
    }
}
