//! `api-key-rotation`: rotates device API keys before they expire and
//! revokes old keys once their grace period is over.
//!
//! Rotation: every active device with rotation enabled whose key expires
//! within `rotate_within` gets a new 256-bit key from the host's secure
//! random source, stored only as a bcrypt hash; the old hash is archived to
//! `device_api_key_history`, valid for `grace` more; the action is written
//! to `audit_logs`. Each device's three writes are one transaction.
//!
//! Revocation: archived keys whose grace period has ended are marked
//! inactive and revoked, each with an audit entry, in one transaction.
//!
//! `[config]`: `rotation` (default true), `revocation` (default true),
//! `rotate_within` (default `7 days`), `key_lifetime` (default `90 days`),
//! `grace` (default `7 days`), `bcrypt_cost` (default 10, 4–16),
//! `max_devices` per run (default 1000).
//! Grants: `devices` select+update, `device_api_key_history`
//! select+insert+update, `audit_logs` insert.

use housekeeper_sdk::sql::{self, Value};
use housekeeper_sdk::time::{self, Age};
use housekeeper_sdk::{Context, Error, Info, Report, Task, config, log, random_bytes};

struct ApiKeyRotation;

/// A new key and its bcrypt hash. The plaintext never leaves this function
/// except as the hash: devices obtain new keys through the platform's own
/// provisioning path.
fn new_key_hash(cost: u32) -> Result<String, Error> {
    let key = hex::encode(random_bytes(32));
    let salt: [u8; 16] = random_bytes(16)
        .try_into()
        .map_err(|_| Error::from("the random source returned too few bytes"))?;
    bcrypt::hash_with_salt(key.as_bytes(), cost, salt)
        .map(|h| h.format_for_version(bcrypt::Version::TwoB))
        .map_err(|e| Error::from(format!("bcrypt: {e}")))
}

fn later(age: Age, now: time::NaiveDateTime) -> i64 {
    time::to_millis(age.after(now))
}

impl Task for ApiKeyRotation {
    fn describe() -> Info {
        Info::new(
            "api-key-rotation",
            "Rotates device API keys before expiry and revokes old keys after the grace period",
        )
        .schedule("0 * * * *")
        .wants("sql:devices:select,update")
        .wants("sql:device_api_key_history:select,insert,update")
        .wants("sql:audit_logs:insert")
    }

    fn run(ctx: &Context) -> Result<Report, Error> {
        let rotate_within = config::age_or("rotate_within", Age::Days(7))?;
        let lifetime = config::age_or("key_lifetime", Age::Days(90))?;
        let grace = config::age_or("grace", Age::Days(7))?;
        let cost = config::u64("bcrypt_cost")?.unwrap_or(10);
        if !(4..=16).contains(&cost) {
            return Err(Error::InvalidConfig(format!(
                "`bcrypt_cost` = {cost}; use 4 to 16"
            )));
        }
        let max_devices = config::u64("max_devices")?.unwrap_or(1000) as i64;
        let now = time::now();
        let now_ms = time::to_millis(now);

        let mut rotated = 0u64;
        let mut failed = Vec::new();
        if config::bool_or("rotation", true)? {
            let due = sql::query(
                "SELECT uuid::text, device_api_key_hash, coalesce(api_key_last_rotated_at, created_at)
                 FROM devices
                 WHERE is_active AND api_key_rotation_enabled
                   AND api_key_expires_at IS NOT NULL AND api_key_expires_at < $1
                 ORDER BY api_key_expires_at
                 LIMIT $2",
                &[
                    Value::Timestamp(later(rotate_within, now)),
                    Value::Integer(max_devices),
                ],
            )?;
            for row in &due.rows {
                let uuid = row[0].as_str().unwrap_or_default().to_owned();
                let old_hash = row[1].clone();
                let issued = row[2].clone();
                let hash = new_key_hash(cost as u32)?;
                let details = format!(
                    "{{\"reason\":\"scheduled rotation\",\"new_expires_at_ms\":{}}}",
                    later(lifetime, now)
                );
                let mut statements: Vec<(&str, Vec<Value>)> = Vec::new();
                if !old_hash.is_null() {
                    statements.push((
                        "INSERT INTO device_api_key_history (device_uuid, key_hash, issued_at, expires_at, is_active)
                         VALUES ($1::uuid, $2, $3, $4, true)",
                        vec![
                            Value::Text(uuid.clone()),
                            old_hash.clone(),
                            issued.clone(),
                            Value::Timestamp(later(grace, now)),
                        ],
                    ));
                }
                statements.push((
                    "UPDATE devices
                     SET device_api_key_hash = $2, api_key_expires_at = $3, api_key_last_rotated_at = $4
                     WHERE uuid = $1::uuid",
                    vec![
                        Value::Text(uuid.clone()),
                        Value::Text(hash),
                        Value::Timestamp(later(lifetime, now)),
                        Value::Timestamp(now_ms),
                    ],
                ));
                statements.push((
                    "INSERT INTO audit_logs (event_type, device_uuid, severity, details)
                     VALUES ('api_key_rotated', $1::uuid, 'info', $2::jsonb)",
                    vec![Value::Text(uuid.clone()), Value::Text(details)],
                ));
                match sql::transaction(&statements) {
                    Ok(_) => rotated += 1,
                    Err(e) => {
                        log::error(format!("device {uuid}: {}", e.message()));
                        failed.push(uuid);
                    }
                }
            }
        }

        let mut revoked = 0u64;
        if config::bool_or("revocation", true)? {
            let cutoff = Value::Timestamp(now_ms);
            let counts = sql::transaction(&[
                (
                    "INSERT INTO audit_logs (event_type, device_uuid, severity, details)
                     SELECT 'api_key_revoked', device_uuid, 'info',
                            jsonb_build_object('reason', 'grace period expired', 'history_id', id)
                     FROM device_api_key_history
                     WHERE is_active AND expires_at IS NOT NULL AND expires_at < $1",
                    vec![cutoff.clone()],
                ),
                (
                    "UPDATE device_api_key_history
                     SET is_active = false, revoked_at = $1, revoked_reason = 'grace period expired'
                     WHERE is_active AND expires_at IS NOT NULL AND expires_at < $1",
                    vec![cutoff],
                ),
            ])?;
            revoked = counts.get(1).copied().unwrap_or(0);
        }

        let summary = format!(
            "{} {rotated} device keys, {} {revoked} old keys",
            ctx.verb("rotated", "would rotate"),
            ctx.verb("revoked", "would revoke"),
        );
        if !failed.is_empty() {
            return Err(Error::failed(format!(
                "{summary}; {} devices failed: {}",
                failed.len(),
                failed.join(", ")
            )));
        }
        Ok(Report::new(summary)
            .metric("keys_rotated", rotated)
            .metric("keys_revoked", revoked))
    }
}

housekeeper_sdk::export_task!(ApiKeyRotation);
