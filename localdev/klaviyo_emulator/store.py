"""The emulator's in-memory account: profiles, lists, bulk jobs. One asyncio thread touches it; no locks.

Jobs are driven by the clock, not by timers: a job created at t with latency L is `queued` until t+L/2,
`processing` until t+L (its profiles are applied progressively, in order) and `complete` from t+L.
Every API request first calls `settle()`, so what a client reads is always consistent with the job
states it can see. With latency 0 the job is applied before the POST is answered.

Bulk imports are handled as columns (all emails, all external ids, ...) so the common case - new
profiles identified by email (and maybe external_id) - is a handful of C-level operations per 10,000
profiles; anything else (phone numbers, ids, updates, conflicts, import-error triggers) goes through the
per-profile path with the same results.
"""

from __future__ import annotations

import bisect
import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import repeat
from operator import itemgetter
from typing import Any

import orjson

from . import fastdecode
from .fastdecode import to_builtins
from .ids import IdFactory

MAX_EMAIL_LENGTH = 254
# A pragmatic address check: local@domain.tld, no whitespace, TLD of letters. Kept simple enough that one
# regex call checks 10,000 newline-joined addresses (the bulk path); `valid_email` and `valid_emails`
# give the same verdicts.
_EMAIL = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,63}"
EMAIL = re.compile(_EMAIL)
EMAILS = re.compile(f"(?:{_EMAIL})(?:\n(?:{_EMAIL}))*")


def valid_email(email: str) -> bool:
    return (
        EMAIL.fullmatch(email) is not None
        and len(email) <= MAX_EMAIL_LENGTH
        and ".." not in email
        and ".@" not in email
        and not email.startswith(".")
    )


def valid_emails(joined: str) -> bool:
    """All of the newline-joined addresses are valid (one C-level pass per check)."""
    return (
        EMAILS.fullmatch(joined) is not None
        and ".." not in joined
        and ".@" not in joined
        and "\n." not in joined
        and not joined.startswith(".")
    )


PHONE = re.compile(r"\+[1-9][0-9]{6,14}")
# Emails at this reserved domain (or a subdomain of it) pass request validation but fail inside the job,
# so clients can exercise reading import errors (RFC 2606 reserves .invalid; nothing real lives there).
IMPORT_ERROR_DOMAIN = "fail.invalid"
IDENTIFIERS = ("email", "phone_number", "external_id")
LOCATION_KEYS = ("address1", "address2", "city", "country", "latitude", "longitude", "region", "zip", "timezone", "ip")
JOB_RETENTION_S = 30 * 86400
SIZE_CHUNK = 64  # profiles serialised together when checking the 100 KB per-profile limit


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="microseconds").replace(".000000", "")


def parse_time(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


def is_failing_email(email: str | None) -> bool:
    return email is not None and (
        email.endswith("@" + IMPORT_ERROR_DOMAIN) or email.endswith("." + IMPORT_ERROR_DOMAIN)
    )


def _set_item(index: int):
    def setter(self: list, value: Any) -> None:
        self[index] = value

    return setter


class Profile(list):
    """[id key, attrs, created, updated, number, subscriptions]: a list so that 10,000 are built in C.

    `number` counts the profiles this process created (creation order); the id is spelled from it and
    the shared id key (see IdFactory.profile_key) only when read."""

    __slots__ = ()
    created = property(itemgetter(2))
    updated = property(itemgetter(3), _set_item(3))
    number = property(itemgetter(4))

    @property
    def attrs(self) -> dict:
        attrs = self[1]
        if type(attrs) is not dict:  # kept as decoded (a msgspec Struct) until someone looks
            attrs = self[1] = to_builtins(attrs)
        return attrs

    @property
    def id(self) -> str:
        prefix, base = self[0]
        return f"{prefix}{base + self[4]:016X}"

    @property
    def subscriptions(self) -> dict[str, dict]:
        if self[5] is None:
            self[5] = {}
        return self[5]

    @classmethod
    def new(cls, key: tuple[str, int], attrs: dict, now: float, number: int) -> Profile:
        return cls((key, attrs, now, now, number, None))


class ProfilesById(Mapping[str, Profile]):
    """Profiles by id, found arithmetically: a profile id encodes the profile's creation number."""

    def __init__(self, store: Store):
        self._store = store

    # type: ignore below: Mapping.get's signature is generic; this one accepts any key and answers None.
    def get(self, pid: object, default: Profile | None = None) -> Profile | None:  # type: ignore[override]
        store = self._store
        number = store.ids.profile_number(pid) if isinstance(pid, str) else None
        if number is None:
            return default
        pos = number - store.first_profile_number
        order = store.profile_order
        if 0 <= pos < len(order) and order[pos].id == pid:
            return order[pos]
        return default

    def __getitem__(self, pid: str) -> Profile:
        profile = self.get(pid)
        if profile is None:
            raise KeyError(pid)
        return profile

    def __contains__(self, pid: object) -> bool:
        return self.get(pid) is not None

    def __len__(self) -> int:
        return len(self._store.profile_order)

    def by_number(self, number: int) -> Profile:
        return self._store.profile_order[number - self._store.first_profile_number]

    def __iter__(self):
        return (p.id for p in self._store.profile_order)


@dataclass
class KList:
    """A list: its members are a set of profile numbers, kept in the order they joined."""

    id: str
    name: str
    created: float
    updated: float
    opt_in_process: str
    members: dict[int, int] = field(default_factory=dict)  # profile number -> join seq
    _order_nums: list[int] = field(default_factory=list)  # append-only, join order, may hold stale entries
    _order_seqs: list[int] = field(default_factory=list)
    _stale: int = 0
    _join_first_seq: list[int] = field(default_factory=list)  # join times, one entry per add call
    _join_time: list[float] = field(default_factory=list)

    def _joined(self, first_seq: int, now: float) -> None:
        self._join_first_seq.append(first_seq)
        self._join_time.append(now)

    def joined_at(self, seq: int) -> float:
        return self._join_time[bisect.bisect_right(self._join_first_seq, seq) - 1]

    def add(self, number: int, seq: int, now: float) -> bool:
        if number in self.members:
            return False
        self.members[number] = seq
        self._order_nums.append(number)
        self._order_seqs.append(seq)
        self._joined(seq, now)
        return True

    def add_new(self, numbers: list[int] | range, first_seq: int, now: float) -> None:
        """Bulk add of distinct profiles none of which is a member yet."""
        seqs = range(first_seq, first_seq + len(numbers))
        self.members.update(zip(numbers, seqs, strict=True))
        self._order_nums.extend(numbers)
        self._order_seqs.extend(seqs)
        self._joined(first_seq, now)

    def remove(self, number: int) -> bool:
        if self.members.pop(number, None) is None:
            return False
        self._stale += 1
        if self._stale > 1024 and self._stale > len(self._order_nums) // 2:
            self._order_nums = list(self.members)
            self._order_seqs = list(self.members.values())
            self._stale = 0
        return True

    def iter_members(self, after_seq: int | None, reverse: bool):
        """(seq, profile number, joined_at) in join order (or reverse), strictly after the cursor seq."""
        nums, seqs, members = self._order_nums, self._order_seqs, self.members
        if not reverse:
            start = 0 if after_seq is None else bisect.bisect_right(seqs, after_seq)
            indices = range(start, len(nums))
        else:
            stop = len(nums) if after_seq is None else bisect.bisect_left(seqs, after_seq)
            indices = range(stop - 1, -1, -1)
        for i in indices:
            seq = seqs[i]
            if members.get(nums[i]) == seq:
                yield seq, nums[i], self.joined_at(seq)


@dataclass
class Batch:
    """The accepted profiles of one request, as columns (index i = the i-th profile of the request)."""

    resources: list[dict]  # the profile resource objects as sent
    attrs: list[dict]  # what the job upserts (for subscriptions: identifiers only)
    emails: list[str | None]  # normalised (trimmed, lower-case)
    phones: list[str | None] | None
    exts: list[str | None] | None
    pids: list[str | None] | None
    fails: list[bool] | None  # the import-error trigger
    simple: bool  # only email (+ external_id) identifiers, no triggers: eligible for the bulk path
    structs: bool = False  # resources/attrs are msgspec Structs (the fast decoder's output)

    def as_dicts(self, start: int, stop: int) -> None:
        """Turn the slice's Structs into dicts before per-profile processing."""
        if not self.structs:
            return
        for i, res in enumerate(to_builtins(self.resources[start:stop]), start):
            self.resources[i] = res
            self.attrs[i] = res["attributes"]

    def __len__(self) -> int:
        return len(self.resources)


@dataclass
class Job:
    id: str
    kind: str  # "import" | "subscribe"
    created: float
    latency: float
    batch: Batch | None
    list_ids: list[str]
    total: int
    options: dict = field(default_factory=dict)
    done: int = 0  # profiles processed so far
    completed_count: int = 0
    failed_count: int = 0
    errors: list[dict] = field(default_factory=list)
    profile_numbers: list[int] = field(default_factory=list)  # the profiles it created or updated
    started_at: float | None = None
    completed_at: float | None = None

    def status(self, now: float) -> str:
        if self.latency <= 0 or self.completed_at is not None:
            return "complete"
        elapsed = now - self.created
        if elapsed < self.latency / 2:
            return "queued"
        if elapsed < self.latency:
            return "processing"
        return "complete"

    def target(self, now: float) -> int:
        """How many profiles should have been processed by `now`."""
        if self.latency <= 0:
            return self.total
        elapsed = now - self.created
        half = self.latency / 2
        if elapsed < half:
            return 0
        if elapsed >= self.latency:
            return self.total
        return min(self.total, int(self.total * (elapsed - half) / half))

    @property
    def expires_at(self) -> float:
        return self.created + JOB_RETENTION_S


class Store:
    def __init__(self, ids: IdFactory):
        self.ids = ids
        self.reset()

    def reset(self) -> None:
        # Profile numbers keep counting across resets, so an id from before a reset finds nothing after it.
        self.first_profile_number: int = getattr(self, "next_profile_number", 0)
        self.next_profile_number: int = self.first_profile_number
        self.profile_order: list[Profile] = []  # position = profile number - first_profile_number
        self.profiles = ProfilesById(self)
        self.by_email: dict[str, Profile] = {}
        self.by_phone: dict[str, Profile] = {}
        self.by_external_id: dict[str, Profile] = {}
        self.lists: dict[str, KList] = {}
        self.list_order: list[KList] = []
        self.jobs: dict[str, Job] = {}
        self.job_order: list[Job] = []
        self.active_jobs: list[Job] = []
        self.seq = 0
        self.optin_emails_sent = 0

    def take_seqs(self, n: int) -> int:
        """Reserve n sequence numbers; returns the first."""
        first = self.seq + 1
        self.seq += n
        return first

    # -- lists ---------------------------------------------------------------------------------------------
    def create_list(self, name: str, opt_in_process: str | None, now: float) -> KList:
        lst = KList(self.ids.short(), name, now, now, opt_in_process or "single_opt_in")
        while lst.id in self.lists:
            lst.id = self.ids.short()
        self.lists[lst.id] = lst
        self.list_order.append(lst)
        return lst

    def add_members(self, lst: KList, numbers: list[int], now: float) -> None:
        if not numbers:
            return
        if lst.members.keys().isdisjoint(numbers) and len(set(numbers)) == len(numbers):
            lst.add_new(numbers, self.take_seqs(len(numbers)), now)
        else:
            for number in numbers:
                if number not in lst.members:
                    lst.add(number, self.take_seqs(1), now)
        lst.updated = now

    # -- profile lookup ------------------------------------------------------------------------------------
    def find(self, email: str | None, phone: str | None, external_id: str | None) -> Profile | None:
        if email is not None and email in self.by_email:
            return self.by_email[email]
        if external_id is not None and external_id in self.by_external_id:
            return self.by_external_id[external_id]
        if phone is not None:
            return self.by_phone.get(phone)
        return None

    # -- request-time checks (what Klaviyo rejects before accepting a job) ---------------------------------
    def prepare_import(
        self,
        resources: list[dict],
        columns: dict[str, list] | None,
        max_profile_bytes: int,
        raw_len: int,
        skip: frozenset[int] = frozenset(),
        structs: bool = False,
    ) -> tuple[Batch | None, list[tuple[str, str]]]:
        """Returns (batch, []) or (None, [(pointer, detail), ...] one per bad profile field). Profiles in
        `skip` (already known to be invalid) are not looked at. `structs`: the resources are msgspec
        Structs (they become dicts unless the bulk path takes them)."""
        oversize = {}
        if raw_len > max_profile_bytes:
            oversize = self._oversize(resources, max_profile_bytes, structs)
        if columns is not None and not oversize and not skip:
            batch = self._prepare_columns(resources, columns, structs)
            if batch is not None:
                return batch, []
        if structs:
            resources = to_builtins(resources)
        return self._prepare_each(resources, oversize, max_profile_bytes, skip)

    @staticmethod
    def _oversize(resources: list, limit: int, structs: bool = False) -> dict[int, int]:
        """{index: bytes} of profiles over the limit; serialises SIZE_CHUNK profiles per call."""
        dumps = fastdecode.msgspec.json.encode if structs else orjson.dumps
        out = {}
        for start in range(0, len(resources), SIZE_CHUNK):
            chunk = resources[start : start + SIZE_CHUNK]
            if len(dumps(chunk)) > limit:
                for i, res in enumerate(chunk, start):
                    size = len(dumps(res))
                    if size > limit:
                        out[i] = size
        return out

    def _prepare_columns(self, resources: list, cols: dict[str, list], structs: bool = False) -> Batch | None:
        """The bulk path: every profile has an email, no phone numbers / profile ids. None = not eligible."""
        emails = cols.get("attributes.email")
        if emails is None or None in emails:
            return None
        for name in ("attributes.phone_number", "id"):
            other = cols.get(name)
            if other is not None and any(other):
                return None
        exts = cols.get("attributes.external_id")
        if exts is not None and "" in exts:
            return None
        joined = "\n".join(emails)
        lowered = joined.lower()
        if IMPORT_ERROR_DOMAIN in lowered or not valid_emails(lowered):
            return None
        normalised = lowered.split("\n")
        if len(normalised) != len(emails) or max(map(len, normalised)) > MAX_EMAIL_LENGTH:
            return None
        attrs = cols["attributes"]
        if lowered != joined:
            for a, e in zip(attrs, normalised, strict=True):
                if structs:
                    a.email = e
                else:
                    a["email"] = e
        return Batch(resources, attrs, normalised, None, exts, None, None, simple=True, structs=structs)

    def _prepare_each(
        self, resources: list[dict], oversize: dict[int, int], limit: int, skip: frozenset[int]
    ) -> tuple[Batch | None, list[tuple[str, str]]]:
        errors: list[tuple[str, str]] = []
        n = len(resources)
        attrs_col: list[dict] = [{}] * n
        emails: list[str | None] = [None] * n
        phones: list[str | None] = [None] * n
        exts: list[str | None] = [None] * n
        pids: list[str | None] = [None] * n
        fails = [False] * n
        base = "/data/attributes/profiles/data/"
        for i, res in enumerate(resources):
            if i in skip:
                continue
            attrs = res["attributes"]
            email = attrs.get("email")
            phone = attrs.get("phone_number")
            ext = attrs.get("external_id") or None
            pid = res.get("id") or None
            if email is not None:
                email = email.strip().lower()
                if not valid_email(email):
                    errors.append((f"{base}{i}/attributes/email", f"Invalid email address: '{attrs['email']}'."))
                else:
                    attrs["email"] = email
            if phone is not None:
                phone = phone.strip()
                if PHONE.fullmatch(phone) is None:
                    detail = f"Invalid phone number: '{attrs['phone_number']}'. Use E.164, e.g. +15005550006."
                    errors.append((f"{base}{i}/attributes/phone_number", detail))
                else:
                    attrs["phone_number"] = phone
            if email is None and phone is None and ext is None and pid is None:
                detail = "A profile needs at least one identifier: email, phone_number or external_id."
                errors.append((f"{base}{i}/attributes", detail))
            if pid is not None and pid not in self.profiles:
                errors.append((f"{base}{i}/id", f"A profile with id '{pid}' does not exist."))
            if i in oversize:
                detail = f"The profile is {oversize[i]} bytes; the maximum size of a profile is {limit} bytes."
                errors.append((f"{base}{i}", detail))
            attrs_col[i], emails[i], phones[i], exts[i], pids[i] = attrs, email, phone, ext, pid
            fails[i] = is_failing_email(email)
        if errors:
            return None, errors
        return Batch(resources, attrs_col, emails, phones, exts, pids, fails, simple=False), []

    # -- jobs ----------------------------------------------------------------------------------------------
    def add_job(self, job: Job, now: float) -> None:
        if job.kind == "import":
            self.jobs[job.id] = job
            self.job_order.append(job)
        self.active_jobs.append(job)
        self.settle(now)

    def settle(self, now: float) -> None:
        """Advance every unfinished job to where the clock says it should be."""
        if not self.active_jobs:
            return
        still = []
        for job in self.active_jobs:
            target = job.target(now)
            if target > job.done:
                if job.started_at is None:
                    job.started_at = now if job.latency <= 0 else job.created + job.latency / 2
                if job.kind == "import":
                    self._apply_import(job, job.done, target, now)
                else:
                    self._apply_subscribe(job, job.done, target, now)
                job.done = target
            if job.done >= job.total:
                job.completed_at = now if job.latency <= 0 else job.created + job.latency
                job.batch = None  # the payload is no longer needed
            else:
                still.append(job)
        self.active_jobs = still

    def _apply_import(self, job: Job, start: int, stop: int, now: float) -> None:
        batch = job.batch
        assert batch is not None
        numbers = self._insert_new(batch, start, stop, now) if batch.simple else None
        fresh = numbers is not None
        if numbers is None:
            numbers = []
            batch.as_dicts(start, stop)
            for i in range(start, stop):
                profile = self._import_one(job, batch, i, now)
                if profile is not None:
                    numbers.append(profile.number)
        job.completed_count += len(numbers)
        job.profile_numbers.extend(numbers)
        for list_id in job.list_ids:
            lst = self.lists.get(list_id)
            if lst is None:
                continue
            if fresh:  # brand-new, distinct profiles cannot be members yet
                lst.add_new(numbers, self.take_seqs(len(numbers)), now)
                lst.updated = now
            else:
                self.add_members(lst, list(numbers), now)

    def _insert_new(self, batch: Batch, start: int, stop: int, now: float) -> range | None:
        """Bulk insert when every profile of the slice is new and distinct: their numbers; else None."""
        n = stop - start
        if not self.by_email.keys().isdisjoint(batch.emails[start:stop]):
            return None  # an update (a re-sync): known before any record is built
        first = self.next_profile_number
        numbers = range(first, first + n)
        # Profile records are built before we know the slice qualifies; dicts of them dedupe in C.
        key = self.ids.profile_key(now)
        records = list(
            map(Profile, zip(repeat(key), batch.attrs[start:stop], repeat(now), repeat(now), numbers, repeat(None)))
        )
        new_emails = dict(zip(batch.emails[start:stop], records, strict=True))
        if len(new_emails) != n:  # the same email twice in the slice
            return None
        new_exts = None
        if batch.exts is not None:
            exts = batch.exts[start:stop]
            if None in exts:
                new_exts = {e: r for e, r in zip(exts, records, strict=True) if e is not None}
                distinct = len(new_exts) == n - exts.count(None)
            else:
                new_exts = dict(zip(exts, records, strict=True))
                distinct = len(new_exts) == n
            if not distinct or not self.by_external_id.keys().isdisjoint(new_exts):
                return None
        self.next_profile_number += n
        self.by_email.update(new_emails)
        if new_exts:
            self.by_external_id.update(new_exts)
        self.profile_order.extend(records)
        return numbers

    def _import_one(self, job: Job, batch: Batch, i: int, now: float) -> Profile | None:
        email = batch.emails[i]
        if batch.fails is not None and batch.fails[i]:
            self._import_error(job, batch, i, "email", f"The email address '{email}' could not be imported.")
            return None
        profile, conflict = self._upsert(batch, i, now)
        if profile is None:
            detail = f"The {conflict} of this profile already belongs to another profile."
            self._import_error(job, batch, i, conflict or "email", detail, code="conflict")
            return None
        return profile

    def _upsert(self, batch: Batch, i: int, now: float) -> tuple[Profile | None, str | None]:
        """Create or update profile i of the batch: (profile, None) or (None, the conflicting identifier)."""
        email = batch.emails[i]
        phone = batch.phones[i] if batch.phones is not None else None
        ext = batch.exts[i] if batch.exts is not None else None
        pid = batch.pids[i] if batch.pids is not None else None
        profile = self.profiles.get(pid) if pid is not None else self.find(email, phone, ext)
        idents = (
            ("email", email, self.by_email),
            ("phone_number", phone, self.by_phone),
            ("external_id", ext, self.by_external_id),
        )
        if profile is not None:
            for name, value, index in idents:
                owner = index.get(value) if value is not None else None
                if owner is not None and owner is not profile:
                    return None, name
            self._merge(profile, batch.attrs[i], idents, now)
        else:
            number = self.next_profile_number
            self.next_profile_number += 1
            profile = Profile.new(self.ids.profile_key(now), batch.attrs[i], now, number)
            self.profile_order.append(profile)
            for _name, value, index in idents:
                if value is not None:
                    index[value] = profile
        meta = batch.resources[i].get("meta")
        if meta:
            self._apply_meta(profile, meta)
        return profile, None

    @staticmethod
    def _merge(profile: Profile, incoming: dict, idents: tuple, now: float) -> None:
        attrs = profile.attrs
        for name, value, index in idents:
            old = attrs.get(name)
            if value is not None and old is not None and old != value and index.get(old) is profile:
                del index[old]  # the identifier changed: the old value no longer finds this profile
        for key, value in incoming.items():
            if value is None:
                if key not in IDENTIFIERS:
                    attrs.pop(key, None)
            elif key in ("properties", "location") and isinstance(attrs.get(key), dict):
                attrs[key] = {**attrs[key], **value}
            else:
                attrs[key] = value
        for _name, value, index in idents:
            if value is not None:
                index[value] = profile
        profile.updated = now

    @staticmethod
    def _apply_meta(profile: Profile, meta: dict) -> None:
        patch = meta.get("patch_properties") or {}
        attrs = profile.attrs
        props = attrs.get("properties") or {}
        for key, value in (patch.get("append") or {}).items():
            current = props.get(key)
            current = [] if current is None else current if isinstance(current, list) else [current]
            props[key] = current + (value if isinstance(value, list) else [value])
        for key, value in (patch.get("unappend") or {}).items():
            if isinstance(props.get(key), list):
                drop = value if isinstance(value, list) else [value]
                props[key] = [x for x in props[key] if x not in drop]
        unset = patch.get("unset")
        for key in [unset] if isinstance(unset, str) else unset or []:
            props.pop(key, None)
        attrs["properties"] = props

    def _import_error(self, job: Job, batch: Batch, i: int, attr: str, detail: str, code: str = "invalid") -> None:
        job.failed_count += 1
        job.errors.append(
            {
                "type": "import-error",
                "id": self.ids.ulid(job.created),
                "attributes": {
                    "code": code,
                    "title": "Invalid input." if code == "invalid" else "Conflict.",
                    "detail": detail,
                    "source": {"pointer": f"/data/attributes/profiles/data/{i}/attributes/{attr}"},
                    "original_payload": batch.resources[i].get("attributes"),
                },
            }
        )

    # -- subscriptions -------------------------------------------------------------------------------------
    def _apply_subscribe(self, job: Job, start: int, stop: int, now: float) -> None:
        batch = job.batch
        assert batch is not None
        lst = self.lists.get(job.list_ids[0]) if job.list_ids else None
        double = lst is not None and lst.opt_in_process == "double_opt_in" and not job.options.get("historical")
        joined: list[int] = []
        for i in range(start, stop):
            profile, _conflict = self._upsert(batch, i, now)
            if profile is None:
                continue
            if double:
                self.optin_emails_sent += 1  # consent waits for a confirmation mail that never comes
                continue
            subs = batch.resources[i]["attributes"].get("subscriptions") or {}
            for channel in ("email", "sms"):
                marketing = (subs.get(channel) or {}).get("marketing")
                if not marketing:
                    continue
                profile.subscriptions[channel] = {
                    "consent": "SUBSCRIBED",
                    "consent_timestamp": parse_time(marketing.get("consented_at")) or now,
                    "last_updated": now,
                    "method": "API",
                    "custom_method_detail": job.options.get("custom_source"),
                    "double_optin": False if lst is not None else None,
                }
            profile.updated = now
            joined.append(profile.number)
        if lst is not None:
            self.add_members(lst, joined, now)
