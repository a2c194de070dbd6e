"""The jobs store in Redis (serve_app/job_store.py has the interface): production's store,
shared by every replica, e.g. the Redis a KubeRay cluster keeps for GCS fault tolerance.

Keys, under a prefix (`jobs.store_prefix`, default `sam3d:jobs:`):

- `job:<id>`     hash: the record, one field per RECORD_FIELDS, values JSON-encoded
- `ev:<id>`      list: the non-frame events, JSON, in seq order
- `frame:<id>`   hash: `meta` (the latest frame event's JSON) and `voxels` (pack_frame)
- `created`      sorted set: id → creation time (the count under jobs.max_jobs)
- `finished`     sorted set: id → end time (what `expire` removes, oldest first)
- `unfinished`   set: ids of queued and running jobs
- `owners`       hash: manager id → its last heartbeat

A finished job's three keys also get a Redis TTL (the jobs TTL plus a minute), so they go
even if no manager runs `expire`; the sorted sets keep the id until `expire` removes it,
so its artifacts are deleted too.
"""
from __future__ import annotations

import asyncio
import json
from typing import Iterable

import redis.asyncio as aioredis

from serve_app.job_store import RECORD_FIELDS, TERMINAL, UNFINISHED, JobStore, frame_event, frame_parts

# Set fields of a job hash that exists, and only if its state is one of the expected ones.
# KEYS[1]: the hash; ARGV[1]: n expected states, ARGV[2..n+1]: them, then field/value pairs.
_UPDATE = """
local st = redis.call('HGET', KEYS[1], 'state')
if not st then return 0 end
local n = tonumber(ARGV[1])
if n > 0 then
  local ok = false
  for i = 2, n + 1 do if ARGV[i] == st then ok = true end end
  if not ok then return 0 end
end
redis.call('HSET', KEYS[1], unpack(ARGV, n + 2))
return 1
"""


class RedisJobStore(JobStore):
    def __init__(self, url: str, prefix: str = "sam3d:jobs:", key_ttl_s: float | None = None,
                 password: str | None = None):
        self.url = url
        self.prefix = prefix
        self.key_ttl_s = key_ttl_s
        self.r = aioredis.from_url(url, decode_responses=False, **({"password": password} if password else {}))
        self._update = self.r.register_script(_UPDATE)

    def _k(self, kind: str, job_id: str = "") -> str:
        return f"{self.prefix}{kind}{':' + job_id if job_id else ''}"

    def _keys(self, job_id: str) -> list[str]:
        return [self._k("job", job_id), self._k("ev", job_id), self._k("frame", job_id)]

    @staticmethod
    def _decode(raw: dict) -> dict | None:
        if not raw:
            return None
        rec = {f: None for f in RECORD_FIELDS}
        rec.update({k.decode(): json.loads(v) for k, v in raw.items()})
        return rec

    async def create(self, record: dict) -> None:
        job_id = record["job_id"]
        async with self.r.pipeline(transaction=True) as p:
            p.hset(self._k("job", job_id), mapping={f: json.dumps(record.get(f)) for f in RECORD_FIELDS})
            p.zadd(self._k("created"), {job_id: record["created"]})
            p.sadd(self._k("unfinished"), job_id)
            await p.execute()

    async def get(self, job_id: str) -> dict | None:
        return self._decode(await self.r.hgetall(self._k("job", job_id)))

    async def update(self, job_id: str, fields: dict, expect: Iterable[str] | None = None) -> bool:
        expect = [json.dumps(s) for s in (expect or ())]
        pairs = [x for k, v in fields.items() for x in (k, json.dumps(v))]
        ok = bool(await self._update(keys=[self._k("job", job_id)], args=[len(expect), *expect, *pairs]))
        if ok and fields.get("state") in TERMINAL:
            async with self.r.pipeline(transaction=True) as p:
                p.zadd(self._k("finished"), {job_id: fields.get("finished") or 0})
                p.srem(self._k("unfinished"), job_id)
                if self.key_ttl_s is not None:
                    for key in self._keys(job_id):
                        p.expire(key, int(self.key_ttl_s) + 60)
                await p.execute()
        return ok

    async def _progress(self, p, job_id: str, ev: dict) -> None:
        p.hset(self._k("job", job_id), mapping={"last_seq": json.dumps(ev["seq"]), "stage": json.dumps(ev["stage"]),
                                                "progress": json.dumps(ev["progress"])})

    async def append_event(self, job_id: str, ev: dict) -> None:
        async with self.r.pipeline(transaction=True) as p:
            p.rpush(self._k("ev", job_id), json.dumps(ev))
            await self._progress(p, job_id, ev)
            await p.execute()

    async def set_frame(self, job_id: str, ev: dict) -> None:
        meta, voxels = await asyncio.to_thread(frame_parts, ev)
        async with self.r.pipeline(transaction=True) as p:
            p.hset(self._k("frame", job_id), mapping={"meta": meta, "voxels": voxels})
            await self._progress(p, job_id, ev)
            await p.execute()

    async def events(self, job_id: str, after: int = -1) -> tuple[list[dict], dict | None]:
        async with self.r.pipeline(transaction=True) as p:
            p.lrange(self._k("ev", job_id), 0, -1)
            p.hmget(self._k("frame", job_id), ["meta", "voxels"])
            raw, (meta, voxels) = await p.execute()
        evs = [e for e in map(json.loads, raw) if e["seq"] > after]
        return evs, (frame_event(meta, voxels) if meta is not None else None)

    async def unfinished(self) -> list[dict]:
        ids = [i.decode() for i in await self.r.smembers(self._k("unfinished"))]
        async with self.r.pipeline(transaction=False) as p:
            for job_id in ids:
                p.hgetall(self._k("job", job_id))
            raws = await p.execute()
        out = [rec for rec in map(self._decode, raws) if rec is not None and rec["state"] in UNFINISHED]
        return sorted(out, key=lambda rec: rec["created"])

    async def heartbeat(self, owner: str, now: float) -> None:
        await self.r.hset(self._k("owners"), owner, now)

    async def owners(self) -> dict[str, float]:
        return {k.decode(): float(v) for k, v in (await self.r.hgetall(self._k("owners"))).items()}

    async def expire(self, now: float, ttl_s: float, max_jobs: int, room: int = 0) -> list[str]:
        gone = [i.decode() for i in await self.r.zrangebyscore(self._k("finished"), "-inf", now - ttl_s)]
        extra = await self.r.zcard(self._k("created")) - len(gone) + room - max_jobs
        if extra > 0:
            oldest = await self.r.zrange(self._k("finished"), 0, len(gone) + extra - 1)
            gone += [i for i in (o.decode() for o in oldest) if i not in gone]
        if gone:
            async with self.r.pipeline(transaction=True) as p:
                for job_id in gone:
                    p.delete(*self._keys(job_id))
                p.zrem(self._k("finished"), *gone)
                p.zrem(self._k("created"), *gone)
                await p.execute()
        stale = [k for k, seen in (await self.owners()).items() if seen < now - 86400]
        if stale:
            await self.r.hdel(self._k("owners"), *stale)
        return gone

    async def count(self) -> int:
        return await self.r.zcard(self._k("created"))

    async def close(self) -> None:
        await self.r.aclose()
