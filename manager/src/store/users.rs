//! Users, their sign-in sessions and their personal access tokens.

use crate::auth::{Hasher, Principal, Scope, parse_token, random_secret, sha256_hex};
use crate::db::{Db, RowExt, now_ms};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use sqlx::AssertSqlSafe;
use sqlx::any::AnyRow;
use utoipa::ToSchema;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct User {
    pub id: i64,
    pub username: String,
    /// The user's scope: `read-only`, `preheat` or `admin`.
    pub role: Scope,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// 1..=64 characters: letters, digits, `.`, `_`, `-`.
    pub username: String,
    /// At least 8 characters.
    pub password: String,
    pub role: Scope,
}

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserPatch {
    pub password: Option<String>,
    pub role: Option<Scope>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Token {
    pub id: i64,
    pub user_id: i64,
    pub username: String,
    pub name: String,
    pub scope: Scope,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// What the token is for, 1..=100 characters.
    pub name: String,
    /// At most the caller's own scope.
    pub scope: Scope,
    /// Lifetime in seconds; none means it never expires.
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
}

/// A token just created: the only time its secret is shown.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub token: Token,
    /// `dfly_<id>_<secret>`: send as `Authorization: Bearer <token>`.
    pub token_value: String,
}

fn user_from(r: &AnyRow) -> User {
    User {
        id: r.i64("id"),
        username: r.string("username"),
        role: Scope::parse(&r.string("role")).unwrap_or(Scope::ReadOnly),
        created_at: r.i64("created_at"),
        updated_at: r.i64("updated_at"),
    }
}

fn token_from(r: &AnyRow) -> Token {
    Token {
        id: r.i64("id"),
        user_id: r.i64("user_id"),
        username: r.string("username"),
        name: r.string("name"),
        scope: Scope::parse(&r.string("scope")).unwrap_or(Scope::ReadOnly),
        created_at: r.i64("created_at"),
        expires_at: r.opt_i64("expires_at"),
        last_used_at: r.opt_i64("last_used_at"),
    }
}

fn validate_username(u: &str) -> Result<()> {
    if u.is_empty() || u.len() > 64 || !u.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
        return Err(Error::invalid(
            "username",
            "must be 1..=64 of letters, digits, '.', '_', '-'",
        ));
    }
    Ok(())
}

fn validate_password(p: &str) -> Result<()> {
    if p.chars().count() < 8 || p.len() > 1024 {
        return Err(Error::invalid("password", "must be 8..=1024 characters"));
    }
    Ok(())
}

/// Creates `root` (admin) on first start. Returns the password when one was
/// generated, so the caller can print it once.
pub async fn ensure_root(db: &Db, hasher: &Hasher, password: Option<String>) -> Result<Option<String>> {
    let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM users WHERE username = 'root'")
        .fetch_optional(&db.pool)
        .await?;
    if exists.is_some() {
        return Ok(None);
    }
    let generated = password.is_none();
    let password = password.unwrap_or_else(|| random_secret()[..24].to_string());
    let now = now_ms();
    let inserted = sqlx::query(
        "INSERT INTO users (username, password_hash, role, created_at, updated_at)
         VALUES ('root', $1, 'admin', $2, $2) ON CONFLICT (username) DO NOTHING",
    )
    .bind(hasher.hash(&password))
    .bind(now)
    .execute(&db.pool)
    .await?
    .rows_affected();
    Ok((inserted == 1 && generated).then_some(password))
}

pub async fn list(db: &Db) -> Result<Vec<User>> {
    let rows = sqlx::query("SELECT id, username, role, created_at, updated_at FROM users ORDER BY id")
        .fetch_all(&db.pool)
        .await?;
    Ok(rows.iter().map(user_from).collect())
}

pub async fn get(db: &Db, id: i64) -> Result<User> {
    let row = sqlx::query("SELECT id, username, role, created_at, updated_at FROM users WHERE id = $1")
        .bind(id)
        .fetch_optional(&db.pool)
        .await?
        .ok_or_else(|| Error::not_found(format!("user {id}")))?;
    Ok(user_from(&row))
}

pub async fn create(db: &Db, hasher: &Hasher, new: NewUser) -> Result<User> {
    validate_username(&new.username)?;
    validate_password(&new.password)?;
    let now = now_ms();
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO users (username, password_hash, role, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $4) RETURNING id",
    )
    .bind(&new.username)
    .bind(hasher.hash(&new.password))
    .bind(new.role.as_str())
    .bind(now)
    .fetch_one(&db.pool)
    .await
    .map_err(|e| match Error::from(e) {
        Error::Conflict(_) => Error::Conflict(format!("user {:?} already exists", new.username)),
        e => e,
    })?;
    get(db, id).await
}

pub async fn update(db: &Db, hasher: &Hasher, id: i64, patch: UserPatch) -> Result<User> {
    let user = get(db, id).await?;
    if let Some(p) = &patch.password {
        validate_password(p)?;
        sqlx::query("UPDATE users SET password_hash = $1, updated_at = $2 WHERE id = $3")
            .bind(hasher.hash(p))
            .bind(now_ms())
            .bind(id)
            .execute(&db.pool)
            .await?;
        // A new password ends every session of that user.
        sqlx::query("DELETE FROM sessions WHERE user_id = $1")
            .bind(id)
            .execute(&db.pool)
            .await?;
    }
    if let Some(role) = patch.role {
        if user.username == "root" && role != Scope::Admin {
            return Err(Error::invalid("role", "root stays admin"));
        }
        sqlx::query("UPDATE users SET role = $1, updated_at = $2 WHERE id = $3")
            .bind(role.as_str())
            .bind(now_ms())
            .bind(id)
            .execute(&db.pool)
            .await?;
    }
    hasher.forget_tokens();
    get(db, id).await
}

pub async fn delete(db: &Db, hasher: &Hasher, id: i64) -> Result<()> {
    let user = get(db, id).await?;
    if user.username == "root" {
        return Err(Error::Conflict("root cannot be deleted".into()));
    }
    sqlx::query("DELETE FROM sessions WHERE user_id = $1")
        .bind(id)
        .execute(&db.pool)
        .await?;
    sqlx::query("DELETE FROM tokens WHERE user_id = $1")
        .bind(id)
        .execute(&db.pool)
        .await?;
    sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(id)
        .execute(&db.pool)
        .await?;
    hasher.forget_tokens();
    Ok(())
}

/// Checks a password; on success opens a session and returns (cookie value, user).
/// Repeated failures for one username slow further attempts (see `Hasher::sign_in_delay`).
pub async fn sign_in(
    db: &Db,
    hasher: &Hasher,
    username: &str,
    password: &str,
    ttl_ms: i64,
) -> Result<(String, User)> {
    let wait = hasher.sign_in_delay(username);
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    let result = check_password(db, hasher, username, password).await;
    match &result {
        Ok(_) => hasher.sign_in_succeeded(username),
        Err(Error::Unauthenticated) => hasher.sign_in_failed(username),
        Err(_) => {}
    }
    let user_id = result?;
    let secret = random_secret();
    let now = now_ms();
    sqlx::query("INSERT INTO sessions (token_hash, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)")
        .bind(sha256_hex(&secret))
        .bind(user_id)
        .bind(now)
        .bind(now + ttl_ms)
        .execute(&db.pool)
        .await?;
    sqlx::query("DELETE FROM sessions WHERE expires_at < $1")
        .bind(now)
        .execute(&db.pool)
        .await?;
    Ok((secret, get(db, user_id).await?))
}

/// The user's id when the password is right.
async fn check_password(db: &Db, hasher: &Hasher, username: &str, password: &str) -> Result<i64> {
    let row = sqlx::query("SELECT id, password_hash FROM users WHERE username = $1")
        .bind(username)
        .fetch_optional(&db.pool)
        .await?;
    let Some(row) = row else {
        // Same cost as a wrong password, so a probe cannot tell names apart.
        let _ = hasher.verify(
            password,
            "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
        );
        return Err(Error::Unauthenticated);
    };
    if !hasher.verify(password, &row.string("password_hash")) {
        return Err(Error::Unauthenticated);
    }
    Ok(row.i64("id"))
}

pub async fn sign_out(db: &Db, session: &str) -> Result<()> {
    sqlx::query("DELETE FROM sessions WHERE token_hash = $1")
        .bind(sha256_hex(session))
        .execute(&db.pool)
        .await?;
    Ok(())
}

pub async fn principal_from_session(db: &Db, session: &str) -> Result<Principal> {
    let row = sqlx::query(
        "SELECT u.id, u.username, u.role FROM sessions s JOIN users u ON u.id = s.user_id
         WHERE s.token_hash = $1 AND s.expires_at > $2",
    )
    .bind(sha256_hex(session))
    .bind(now_ms())
    .fetch_optional(&db.pool)
    .await?
    .ok_or(Error::Unauthenticated)?;
    Ok(Principal {
        user_id: row.i64("id"),
        username: row.string("username"),
        scope: Scope::parse(&row.string("role")).unwrap_or(Scope::ReadOnly),
        token_id: None,
    })
}

pub async fn principal_from_token(db: &Db, hasher: &Hasher, token: &str) -> Result<Principal> {
    if let Some(p) = hasher.cached_token(token) {
        return Ok(p);
    }
    let (id, secret) = parse_token(token).ok_or(Error::Unauthenticated)?;
    let row = sqlx::query(
        "SELECT t.secret_hash, t.scope, t.expires_at, u.id AS user_id, u.username, u.role
         FROM tokens t JOIN users u ON u.id = t.user_id WHERE t.id = $1",
    )
    .bind(id)
    .fetch_optional(&db.pool)
    .await?
    .ok_or(Error::Unauthenticated)?;
    let now = now_ms();
    if row.opt_i64("expires_at").is_some_and(|e| e <= now) {
        return Err(Error::Unauthenticated);
    }
    if !hasher.verify(secret, &row.string("secret_hash")) {
        return Err(Error::Unauthenticated);
    }
    let role = Scope::parse(&row.string("role")).unwrap_or(Scope::ReadOnly);
    let scope = Scope::parse(&row.string("scope")).unwrap_or(Scope::ReadOnly);
    let p = Principal {
        user_id: row.i64("user_id"),
        username: row.string("username"),
        scope: role.min(scope),
        token_id: Some(id),
    };
    sqlx::query("UPDATE tokens SET last_used_at = $1 WHERE id = $2")
        .bind(now)
        .bind(id)
        .execute(&db.pool)
        .await?;
    hasher.remember_token(token, &p, row.opt_i64("expires_at"));
    Ok(p)
}

const TOKEN_COLS: &str =
    "t.id, t.user_id, u.username, t.name, t.scope, t.created_at, t.expires_at, t.last_used_at";

/// Tokens of one user, or of everyone when `user_id` is `None`.
pub async fn list_tokens(db: &Db, user_id: Option<i64>) -> Result<Vec<Token>> {
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT {TOKEN_COLS} FROM tokens t JOIN users u ON u.id = t.user_id
         WHERE ($1 = 0 OR t.user_id = $1) ORDER BY t.id"
    )))
    .bind(user_id.unwrap_or(0))
    .fetch_all(&db.pool)
    .await?;
    Ok(rows.iter().map(token_from).collect())
}

pub async fn get_token(db: &Db, id: i64) -> Result<Token> {
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT {TOKEN_COLS} FROM tokens t JOIN users u ON u.id = t.user_id WHERE t.id = $1"
    )))
    .bind(id)
    .fetch_optional(&db.pool)
    .await?
    .ok_or_else(|| Error::not_found(format!("token {id}")))?;
    Ok(token_from(&row))
}

pub async fn create_token(
    db: &Db,
    hasher: &Hasher,
    owner: &Principal,
    new: NewToken,
) -> Result<CreatedToken> {
    crate::store::clusters::validate_name("name", &new.name)?;
    if new.scope > owner.scope {
        return Err(Error::invalid("scope", "cannot exceed the caller's own scope"));
    }
    if new.expires_in_secs == Some(0) || new.expires_in_secs.is_some_and(|s| s > 10 * 365 * 86400) {
        return Err(Error::invalid("expires_in_secs", "must be within 1..=315360000"));
    }
    let secret = random_secret();
    let now = now_ms();
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO tokens (user_id, name, scope, secret_hash, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
    )
    .bind(owner.user_id)
    .bind(new.name.trim())
    .bind(new.scope.as_str())
    .bind(hasher.hash(&secret))
    .bind(now)
    .bind(new.expires_in_secs.map(|s| now + s as i64 * 1000))
    .fetch_one(&db.pool)
    .await?;
    Ok(CreatedToken {
        token: get_token(db, id).await?,
        token_value: format!("dfly_{id}_{secret}"),
    })
}

pub async fn delete_token(db: &Db, hasher: &Hasher, id: i64) -> Result<()> {
    sqlx::query("DELETE FROM tokens WHERE id = $1")
        .bind(id)
        .execute(&db.pool)
        .await?;
    hasher.forget_tokens();
    Ok(())
}
