"""The durable source of truth: revocation records in Redis.

Keys (all in one hash slot, ``{namespace}``, so scripts work on Redis Cluster):

=====================  =====================================================
``{ns}:seq``           the committed head: last allocated ``seq`` (INCR)
``{ns}:log``           zset, score ``seq``: every live record (outbox + history)
``{ns}:log_exp``       zset ``seq`` -> ``expires_at``, for the purge
``{ns}:records``       hash ``kind:subject`` -> the dominant record, for point checks
``{ns}:rank``          hash ``kind:subject`` -> what makes a record dominant
``{ns}:rec_exp``       zset ``kind:subject`` -> ``expires_at``, for the purge
``{ns}:wake``          list of at most one item, the newest record: wakes a worker
``{ns}:relayed``       highest ``seq`` some worker has published
``{ns}:beat``          the newest heartbeat: its Redis TIME and epoch (``sec.usec replid``)
``{ns}:clients``       hash: live clients' presence (see :mod:`revocation.presence`)
``{ns}:workers``       hash: live workers' presence
=====================  =====================================================

A commit is one Lua script: INCR the head, add the record to the log and the
records hash, wake a worker. The record's JSON is built in Python (exact
floats); the script only splices its integer ``seq`` in front.

Async callers (``averify``, ``arevoke``) run these same calls on a thread
pool: one implementation, no connections bound to an event loop.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from .errors import NotReplicated
from .events import Kind, Revocation, parse_records
from .tokens import Session

# ARGV holds records four values each: field, body, expires_at, rank. One call
# commits one record or a batch, in order; it returns the records as stored.
_COMMIT = """
local records = {}
for i = 1, #ARGV, 4 do
  local field, body, expires_at, rank = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local seq = redis.call('INCR', KEYS[1])
  local record = '{"seq":' .. seq .. ',' .. string.sub(body, 2)
  redis.call('ZADD', KEYS[2], seq, record)
  redis.call('ZADD', KEYS[3], expires_at, seq)
  local current = redis.call('HGET', KEYS[5], field)
  if (not current) or tonumber(rank) >= tonumber(current) then
    redis.call('HSET', KEYS[4], field, record)
    redis.call('HSET', KEYS[5], field, rank)
  end
  redis.call('ZADD', KEYS[6], 'GT', expires_at, field)
  records[#records + 1] = record
end
redis.call('LPUSH', KEYS[7], records[#records])
redis.call('LTRIM', KEYS[7], 0, 0)
return records
"""

_PURGE = """
local seqs = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, s in ipairs(seqs) do
  redis.call('ZREMRANGEBYSCORE', KEYS[1], s, s)
end
if #seqs > 0 then redis.call('ZREM', KEYS[2], unpack(seqs)) end
local fields = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
if #fields > 0 then
  redis.call('HDEL', KEYS[3], unpack(fields))
  redis.call('HDEL', KEYS[4], unpack(fields))
  redis.call('ZREM', KEYS[5], unpack(fields))
end
return {#seqs, #fields}
"""

# Returns {head, relayed, skipped, seconds, microseconds, epoch, records...}: the
# server's TIME dates the heartbeat that follows. When ARGV[3] is 1 (a heartbeat
# is due) the epoch is the master's replication id, which changes when a replica
# is promoted, and "time epoch" is kept in KEYS[4]: a catch-up reads it, and no
# heartbeat older than it can be news. A backlog longer than ARGV[2]
# is skipped, not relayed: clients see the head in the next heartbeat and
# catch up from the store, which is faster than replaying it on the channel.
_PENDING = """
local head = tonumber(redis.call('GET', KEYS[1]) or '0')
local relayed = tonumber(redis.call('GET', KEYS[3]) or '0')
local skipped = 0
if head - relayed > tonumber(ARGV[2]) then
  skipped = head - tonumber(ARGV[1]) - relayed
  relayed = head - tonumber(ARGV[1])
  redis.call('SET', KEYS[3], relayed)
end
local records = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. relayed, head, 'LIMIT', 0, ARGV[1])
local now = redis.call('TIME')
local epoch = ''
if ARGV[3] == '1' then
  epoch = string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)') or ''
  local date = now[1] .. '.' .. string.format('%06d', tonumber(now[2]))
  redis.call('SET', KEYS[4], date .. ' ' .. epoch)
end
table.insert(records, 1, epoch)
table.insert(records, 1, now[2])
table.insert(records, 1, now[1])
table.insert(records, 1, skipped)
table.insert(records, 1, relayed)
table.insert(records, 1, head)
return records
"""

_ADVANCE = """
local relayed = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > relayed then
  redis.call('SET', KEYS[1], ARGV[1])
  return 1
end
return 0
"""

SINCE_PAGE = 10_000
PURGE_BATCH = 1_000


@dataclass(frozen=True, slots=True)
class Keys:
    """The key and channel names of one deployment."""

    seq: str
    log: str
    log_exp: str
    records: str
    rank: str
    rec_exp: str
    wake: str
    relayed: str
    beat: str
    clients: str
    workers: str
    channel: str

    @property
    def commit_keys(self) -> list[str]:
        """KEYS of the commit script."""
        return [self.seq, self.log, self.log_exp, self.records, self.rank, self.rec_exp, self.wake]

    @classmethod
    def for_namespace(cls, namespace: str) -> Keys:
        tag = "{" + namespace + "}"
        return cls(
            seq=f"{tag}:seq",
            log=f"{tag}:log",
            log_exp=f"{tag}:log_exp",
            records=f"{tag}:records",
            rank=f"{tag}:rank",
            rec_exp=f"{tag}:rec_exp",
            wake=f"{tag}:wake",
            relayed=f"{tag}:relayed",
            beat=f"{tag}:beat",
            clients=f"{tag}:clients",
            workers=f"{tag}:workers",
            channel=f"{tag}:events",
        )


@dataclass(frozen=True, slots=True)
class Pending:
    """What a worker has to relay: ``records`` after ``relayed``, up to ``head``."""

    head: int
    relayed: int
    skipped: int
    time: float
    """The Redis server's clock when this was read."""
    epoch: str
    """The master's replication id (read only when a heartbeat is due; else empty)."""
    records: list[bytes]


def server_time(reply: Sequence[Any]) -> float:
    """Unix time from a Redis TIME reply (the same float as the ``beat`` key's text)."""
    return float(f"{int(reply[0])}.{int(reply[1]):06d}")


def commit_args(
    *, kind: Kind, subject: str, body: bytes, expires_at: float, not_before: float | None
) -> list[Any]:
    """ARGV of the commit script. A record outranks an older one of the same
    target when it revokes more: a later ``not_before``, or a later expiry."""
    rank = not_before if not_before is not None else expires_at
    return [f"{kind}:{subject}", body, repr(expires_at), repr(rank)]


def point_fields(session: Session) -> list[str]:
    """The records-hash fields that could revoke ``session``."""
    fields = [f"token:{session.jti}", f"user:{session.user_id}", "all:*"]
    if session.session_handle is not None:
        fields.append(f"session:{session.session_handle}")
    return fields


def first_match(
    raw: Sequence[bytes | None], session: Session, now: float, leeway: float
) -> Revocation | None:
    """The record among ``raw`` (an HMGET reply) that revokes ``session``."""
    for revocation in parse_records([r for r in raw if r is not None]):
        if now < revocation.expires_at + leeway and revocation.matches(session):
            return revocation
    return None


def _pending(reply: list[Any]) -> Pending:
    epoch = reply[5].decode() if isinstance(reply[5], bytes) else str(reply[5])
    return Pending(
        int(reply[0]), int(reply[1]), int(reply[2]), server_time(reply[3:5]), epoch, list(reply[6:])
    )


class Store:
    """Synchronous access to the store. Thread-safe (redis-py's pool is)."""

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        # Replies are typed loosely by redis-py; `_redis` narrows them to Any.
        self._redis: Any = client
        self.client = client
        self.keys = Keys.for_namespace(namespace)
        self._commit = client.register_script(_COMMIT)
        self._purge = client.register_script(_PURGE)
        self._pending = client.register_script(_PENDING)
        self._advance = client.register_script(_ADVANCE)

    def time(self) -> float:
        """The Redis server's clock, the one clock all revocations are dated by."""
        return server_time(self._redis.time())

    def commit(self, args: list[Any]) -> Revocation:
        """Commit one record (see :func:`commit_args`); returns it with its seq."""
        return self.commit_many([args])[0]

    def commit_many(
        self,
        args: list[list[Any]],
        *,
        chunk: int = 1000,
        replicas: int = 0,
        replica_timeout: float = 1.0,
    ) -> list[Revocation]:
        """Commit records in order, ``chunk`` per script call (each call is atomic).

        With ``replicas``, each call is followed by ``WAIT`` on the same
        connection: it returns once that many replicas acknowledged the writes,
        else raises :class:`NotReplicated` (the records are committed on the
        master, but a failover could lose them).
        """
        records: list[bytes] = []
        for start in range(0, len(args), chunk):
            flat = [value for one in args[start : start + chunk] for value in one]
            if not replicas:
                records += self._commit(keys=self.keys.commit_keys, args=flat)
                continue
            pipe = self._redis.pipeline(transaction=False)
            self._commit(keys=self.keys.commit_keys, args=flat, client=pipe)
            pipe.execute_command("WAIT", replicas, max(1, int(replica_timeout * 1000)))
            committed, acknowledged = pipe.execute()
            records += committed
            if int(acknowledged) < replicas:
                raise NotReplicated(
                    f"committed on the master but acknowledged by {acknowledged} of "
                    f"{replicas} replica(s) in {replica_timeout}s: a failover now could lose it",
                    committed=parse_records(records),
                    acknowledged=int(acknowledged),
                )
        return parse_records(records)

    def head(self) -> int:
        """The committed head."""
        return int(self._redis.get(self.keys.seq) or 0)

    def since(self, seq: int, *, page: int = SINCE_PAGE) -> tuple[int, list[Revocation]]:
        """``(head, records)`` as :class:`Revocation` objects; see :meth:`since_raw`."""
        head, records = self.since_raw(seq, page=page)
        return head, parse_records(records)

    def since_raw(self, seq: int, *, page: int = SINCE_PAGE) -> tuple[int, list[bytes]]:
        """``(head, records)``: every live record with ``seq`` in ``(seq, head]``, as JSON.

        Not one atomic read, and need not be: the head is read first, and every
        record up to it was already in the log when it was (INCR and ZADD are
        one script); only the purge removes records, and only expired ones.
        """
        head, pages = self.pages_since(seq, page=page)
        return head, [record for chunk in pages for record in chunk]

    def pages_since(self, seq: int, *, page: int = SINCE_PAGE) -> tuple[int, Iterator[list[bytes]]]:
        """:meth:`since_raw` as ``(head, pages)``, pages read lazily, for bulk loads."""
        head = self.head()
        return head, self._pages(seq, head, page)

    def _pages(self, seq: int, head: int, page: int) -> Iterator[list[bytes]]:
        # Windows of seqs, several per pipeline, so Redis writes one while this
        # side reads another. Seqs are dense but for purged (expired) records,
        # so a window holds at most ``page`` records.
        windows = [(start, min(start + page, head)) for start in range(seq, head, page)]
        for group in range(0, len(windows), 8):
            pipe = self._redis.pipeline(transaction=False)
            for low, high in windows[group : group + 8]:
                pipe.zrangebyscore(self.keys.log, f"({low}", high)
            yield from pipe.execute()

    def check(self, session: Session, now: float, leeway: float) -> Revocation | None:
        """The point check: the record that revokes ``session``, if any."""
        return first_match(
            self._redis.hmget(self.keys.records, point_fields(session)), session, now, leeway
        )

    def purge(self, now: float) -> tuple[int, int]:
        """Delete records that expired before ``now``: ``(log entries, records)``."""
        k = self.keys
        total_log = total_records = 0
        while True:
            log, records = self._purge(
                keys=[k.log, k.log_exp, k.records, k.rank, k.rec_exp], args=[repr(now), PURGE_BATCH]
            )
            total_log += int(log)
            total_records += int(records)
            if log < PURGE_BATCH and records < PURGE_BATCH:
                return total_log, total_records

    def pending(self, batch: int, max_backlog: int, *, heartbeat: bool = False) -> Pending:
        """Records committed but not yet relayed, oldest first, at most ``batch``.

        With ``heartbeat``, the reply's time is also kept as the newest heartbeat's date.
        """
        k = self.keys
        reply = self._pending(
            keys=[k.seq, k.log, k.relayed, k.beat], args=[batch, max_backlog, int(heartbeat)]
        )
        return _pending(reply)

    def last_beat(self) -> tuple[float, str]:
        """``(date, epoch)`` of the newest heartbeat a worker sent; ``(0, "")`` before one."""
        value = self._redis.get(self.keys.beat)
        if not value:
            return 0.0, ""
        date, _, epoch = value.decode().partition(" ")
        return float(date), epoch

    def advance(self, relayed: int, *, pipe: redis.client.Pipeline | None = None) -> None:
        """Record that everything up to ``relayed`` was published (never moves back).

        With ``pipe``, the call is queued on that pipeline instead.
        """
        self._advance(keys=[self.keys.relayed], args=[relayed], client=pipe)

    def wait_for_commit(self, timeout: float) -> bytes | None:
        """Block up to ``timeout`` seconds for a commit; the newest record, or None."""
        popped = self._redis.blpop([self.keys.wake], timeout=timeout)
        return None if popped is None else bytes(popped[1])

    def counts(self) -> dict[str, int]:
        """Live records by kind, log length, head and relayed cursor."""
        k = self.keys
        by_kind: dict[str, int] = {"token": 0, "session": 0, "user": 0, "all": 0}
        # HSCAN NOVALUES needs Redis 7.4; the values come along and are dropped.
        for field, _ in self._redis.hscan_iter(k.records, count=1000):
            kind = field.decode().split(":", 1)[0]
            by_kind[kind] = by_kind.get(kind, 0) + 1
        head, relayed, log = (
            self._redis.pipeline(transaction=False).get(k.seq).get(k.relayed).zcard(k.log).execute()
        )
        return {
            **by_kind,
            "log": int(log),
            "head": int(head or 0),
            "relayed": int(relayed or 0),
        }
