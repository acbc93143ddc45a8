//! The Lua scripts that make every step of the fleet one atomic Redis call.
//!
//! Times inside the scripts come from Redis (`TIME`), never from the caller: leases,
//! gates and due times are then measured on one clock whatever the replicas' clocks say.
//! Redis 5 and later replicate a script's effects, not the script, so reading `TIME` is
//! safe on replicas and in the AOF.
//!
//! An entry (one key and coalescing bucket of a delta meter, or one key of an absolute
//! meter, named by [`super::keys::EntryId`]) is a hash:
//!
//! | field | meaning |
//! | --- | --- |
//! | `agreement`, `feature`, `type`, `bucket` | what it bills (`type` is `d` or `a`) |
//! | `pending`, `pstamp`, `has`, `psince` | usage handed off and not yet claimed: its value (summed, or the last absolute value), the latest window stamp, whether there is any, and since when (ms) |
//! | `flight`, `fstamp`, `lineage`, `attempts`, `maybe` | the value being delivered: what is sent, its stamp, the fencing token of its first claim (the idempotency key's lineage), attempts so far, whether one may have been applied |
//! | `token`, `owner`, `deadline` | the current claim: fencing token (a counter and the deliverer's name, so no token repeats even if Redis loses the counter), deliverer, lease end (ms) |
//!
//! New usage never joins a flight: it waits in `pending` and is claimed as the next flight
//! once the current one settles, so a retried request always carries what it carried the
//! first time, under the same idempotency key.
//!
//! Scripts are not rolled back when a command fails midway, so each one checks first
//! whatever could fail, and writes only once nothing can (counters are increased with
//! `pcall`: a full counter must not strand an entry).

use redis::Script;

/// The error a script returns when it refuses a hand-off that would fail the same way
/// again (an entry's sum past 2⁶³).
pub(crate) const REFUSED: &str = "KMREFUSED";

/// Hands one record to its entry, once per idempotency key.
///
/// KEYS: marker, entry, due, since, stats, last absolute stamps. ARGV: entry id, value,
/// type (`d`/`a`), window stamp (unix s), marker ttl (ms), gather (ms), agreement,
/// feature, bucket. Returns 1 when applied (or superseded: an absolute value older than
/// one the fleet holds or sent), 0 when the marker says it already was.
const HANDOFF: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local e = KEYS[2]
local delta = ARGV[3] == 'd'
if delta then
  local cur = tonumber(redis.call('HGET', e, 'pending') or '0')
  if cur + tonumber(ARGV[2]) >= 9.2e18 then
    return redis.error_reply('KMREFUSED the entry would pass 2^63')
  end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('SET', KEYS[1], '1', 'PX', ARGV[5])
redis.pcall('HINCRBY', KEYS[5], 'handoffs', 1)
local stamp = tonumber(ARGV[4])
local pstamp = tonumber(redis.call('HGET', e, 'pstamp') or '-1')
if delta then
  redis.call('HINCRBY', e, 'pending', ARGV[2])
  if stamp > pstamp then redis.call('HSET', e, 'pstamp', ARGV[4]) end
else
  -- Last write wins by window stamp (a tie goes to the later hand-off), against what
  -- waits, what is in flight (`pstamp` stays when a flight is claimed) and what was
  -- delivered last.
  local sent = tonumber(redis.call('HGET', KEYS[6], ARGV[1]) or '-1')
  if stamp < pstamp or stamp < sent then return 1 end
  redis.call('HSET', e, 'pending', ARGV[2], 'pstamp', ARGV[4])
end
redis.call('HSETNX', e, 'agreement', ARGV[7])
redis.call('HSETNX', e, 'feature', ARGV[8])
redis.call('HSETNX', e, 'type', ARGV[3])
redis.call('HSETNX', e, 'bucket', ARGV[9])
if redis.call('HGET', e, 'has') ~= '1' then
  redis.call('HSET', e, 'has', '1', 'psince', now)
end
-- The oldest undelivered usage of the entry: kept if older.
redis.call('ZADD', KEYS[4], 'NX', now, ARGV[1])
-- An entry out for delivery is queued again when its flight settles.
if not redis.call('HGET', e, 'token') then
  redis.call('ZADD', KEYS[3], 'NX', now + tonumber(ARGV[6]), ARGV[1])
end
return 1
";

/// Claims due entries for one deliverer, within the gate, the token bucket and the
/// in-flight limit.
///
/// KEYS: due, inflight, gate, bucket, fence, since. ARGV: entry key prefix, owner, lease
/// (ms), max in flight, batch, rate (requests/s, 0 for none), burst.
/// Returns `{'gate'|'full'|'rate', wait_ms}` or `{'claimed', '0', id, token, value, stamp,
/// lineage, attempts, maybe, agreement, feature, type, ...}`.
const CLAIM: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local gate = redis.call('PTTL', KEYS[3])
if gate > 0 then return {'gate', tostring(gate)} end
local room = tonumber(ARGV[4]) - redis.call('ZCARD', KEYS[2])
if room <= 0 then return {'full', '0'} end
local take = math.min(room, tonumber(ARGV[5]))
local rate = tonumber(ARGV[6])
local tokens = 0
if rate > 0 then
  local burst = tonumber(ARGV[7])
  local b = redis.call('HMGET', KEYS[4], 'tokens', 'at')
  tokens = tonumber(b[1] or burst)
  local at = tonumber(b[2] or now)
  tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000)
  if tokens < 1 then
    redis.call('HSET', KEYS[4], 'tokens', tokens, 'at', now)
    return {'rate', tostring(math.ceil((1 - tokens) * 1000 / rate))}
  end
  take = math.min(take, math.floor(tokens))
end
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, take)
local out = {'claimed', '0'}
local claimed = 0
local lease = tonumber(ARGV[3])
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  local e = ARGV[1] .. id
  local f = redis.call('HMGET', e, 'token', 'flight', 'has', 'type')
  local owned = f[1]
  local flight = f[2]
  local has = f[3] == '1'
  if not owned and (flight or has) then
    local token = redis.call('INCR', KEYS[5]) .. ':' .. ARGV[2]
    if has and (not flight or f[4] == 'a') then
      -- A new flight: what waits. For an absolute meter the newest value also replaces
      -- an older one that was not delivered yet (last write wins).
      local p = redis.call('HMGET', e, 'pending', 'pstamp')
      redis.call('HSET', e, 'flight', p[1], 'fstamp', p[2], 'lineage', token, 'attempts', 0, 'maybe', 0,
        'has', 0, 'pending', 0)
      redis.call('HDEL', e, 'psince')
    end
    redis.call('HSET', e, 'token', token, 'owner', ARGV[2], 'deadline', now + lease)
    redis.call('ZADD', KEYS[2], now + lease, id)
    local g = redis.call('HMGET', e, 'flight', 'fstamp', 'lineage', 'attempts', 'maybe', 'agreement', 'feature', 'type')
    claimed = claimed + 1
    out[#out + 1] = id
    out[#out + 1] = token
    for i = 1, 8 do out[#out + 1] = g[i] or '' end
  elseif not owned then
    -- Nothing left in it: forget it.
    redis.call('DEL', e)
    redis.call('ZREM', KEYS[6], id)
  end
end
if rate > 0 then
  redis.call('HSET', KEYS[4], 'tokens', tokens - claimed, 'at', now)
end
return out
";

/// Settles a claim, if its fencing token still holds it.
///
/// KEYS: entry, inflight, due, since, stats, dead letters, last absolute stamps. ARGV:
/// entry id, token, outcome (`ok`, `rejected`, `unsent`, `retry`, `ambiguous`,
/// `ambiguous_unsent`), retry delay (ms), gather (ms), dead letter (JSON). Returns 1, or
/// 0 when the claim was fenced off.
const SETTLE: &str = r"
local e = KEYS[1]
if redis.call('HGET', e, 'token') ~= ARGV[2] then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local outcome = ARGV[3]
local value = redis.call('HGET', e, 'flight') or '0'
local delta = redis.call('HGET', e, 'type') == 'd'
local function add(field, records)
  if delta then redis.pcall('HINCRBY', KEYS[5], field, value) end
  redis.pcall('HINCRBY', KEYS[5], records, 1)
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', e, 'token', 'owner', 'deadline')
if outcome == 'ambiguous' or outcome == 'ambiguous_unsent' then add('ambiguous', 'ambiguous_records') end
if outcome == 'retry' or outcome == 'ambiguous' then
  redis.call('HINCRBY', e, 'attempts', 1)
  if outcome == 'ambiguous' then redis.call('HSET', e, 'maybe', 1) end
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[4]), ARGV[1])
  return 1
end
if outcome == 'ok' then
  add('delivered', 'delivered_records')
  if not delta then
    redis.call('HSET', KEYS[7], ARGV[1], redis.call('HGET', e, 'fstamp') or '0')
  end
elseif outcome == 'rejected' then add('rejected', 'rejected_records')
else add('unsent', 'unsent_records') end
if outcome ~= 'ok' then
  redis.call('LPUSH', KEYS[6], ARGV[6])
  redis.call('LTRIM', KEYS[6], 0, 9999)
end
redis.call('HDEL', e, 'flight', 'fstamp', 'lineage', 'attempts', 'maybe')
if redis.call('HGET', e, 'has') == '1' then
  local since = tonumber(redis.call('HGET', e, 'psince') or now)
  redis.call('ZADD', KEYS[4], 'XX', since, ARGV[1])
  redis.call('ZADD', KEYS[3], math.max(now, since + tonumber(ARGV[5])), ARGV[1])
else
  redis.call('DEL', e)
  redis.call('ZREM', KEYS[4], ARGV[1])
end
return 1
";

/// Takes back claims whose lease ran out: their send may have reached Kinde, so each is
/// ambiguous, and the returned entries are settled by the caller per `Delivery`.
///
/// KEYS: inflight, stats. ARGV: entry key prefix, limit, owner. Returns `{id, token, ...}`
/// with a fresh token per entry that only the caller holds.
const EXPIRED: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, id in ipairs(ids) do
  local e = ARGV[1] .. id
  if redis.call('HGET', e, 'token') then
    -- A new token fences the lost owner off: its late answer settles nothing.
    local n = redis.pcall('HINCRBY', KEYS[2], 'expired_leases', 1)
    if type(n) ~= 'number' then n = now end
    local token = 'x' .. n .. ':' .. ARGV[3]
    redis.call('HSET', e, 'token', token, 'owner', ARGV[3], 'deadline', now + 60000)
    redis.call('ZADD', KEYS[1], now + 60000, id)
    out[#out + 1] = id
    out[#out + 1] = token
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
";

/// Closes the fleet's gate for `ms`, unless it is already closed for longer.
///
/// KEYS: gate, stats. ARGV: ms.
const GATE: &str = r"
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
redis.call('HINCRBY', KEYS[2], 'throttled', 1)
return 1
";

/// The scripts, loaded once per connection by `EVALSHA` (falling back to `EVAL`).
#[derive(Debug)]
pub(crate) struct Scripts {
    pub(crate) handoff: Script,
    pub(crate) claim: Script,
    pub(crate) settle: Script,
    pub(crate) expired: Script,
    pub(crate) gate: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Self {
            handoff: Script::new(HANDOFF),
            claim: Script::new(CLAIM),
            settle: Script::new(SETTLE),
            expired: Script::new(EXPIRED),
            gate: Script::new(GATE),
        }
    }
}
