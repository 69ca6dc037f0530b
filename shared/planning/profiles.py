"""Turning a source row into a Klaviyo profile: email checks, phone normalisation, field mapping.

Planning and pushing use the same mapper, so what was planned is exactly what is sent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import itemgetter

import orjson
import xxhash
from pydantic_core import PydanticCustomError

from shared.platform.config import check_target
from shared.platform.errors import ConfigError

# Klaviyo's 100 KB per profile, as the client counts it (FlushPolicy.max_profile_bytes, kept equal by a test)
MAX_PROFILE_BYTES = 100_000
PHONE_WARNING = "phone number is not E.164; left out of the profile"

_LOCAL = r"[a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
EMAIL_BODY_PATTERN = rf"{_LOCAL}@(?:{_LABEL}\.)+(?:[a-z]{{2,63}}|xn--[a-z0-9-]{{1,59}})"
# Lengths ride in lookaheads so one fullmatch call is the whole check on the hot path.
_EMAIL = re.compile(rf"(?=.{{3,254}}$)(?=[^@]{{1,64}}@){EMAIL_BODY_PATTERN}")
email_ok = _EMAIL.fullmatch
# The same check over a block of lower-cased emails, one per line: findall returns them trimmed, and a block
# is clean exactly when it returns one per line.
_EMAIL_LINES = re.compile(rf"^[ \t]*((?=[^\n]{{3,254}}$)(?=[^@\n]{{1,64}}@){EMAIL_BODY_PATTERN})[ \t]*$", re.M)


def clean_emails(raw: list[str]) -> list[str] | None:
    """Normalised emails when every one of them is valid (the fast path), else None."""
    joined = "\n".join(raw)
    if joined.count("\n") != len(raw) - 1:  # a line break inside a field would shift the lines
        return None
    found = _EMAIL_LINES.findall(joined.lower())
    return found if len(found) == len(raw) else None


_PHONE_JUNK = re.compile(r"[\s().\-/]")
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")


def email_problem(email: str) -> str | None:
    """None when the (normalised) email is acceptable, else the reason. Syntax only, no DNS."""
    if not email:
        return "missing email"
    if not email_ok(email):
        return "invalid email address"
    return None


def normalise_phone(raw: str) -> str | None:
    """E.164 or None. Spaces, dots, dashes and brackets go; a leading 00 becomes +."""
    phone = _PHONE_JUNK.sub("", raw)
    if phone.startswith("00"):
        phone = "+" + phone[2:]
    return phone if _E164.fullmatch(phone) else None


def email_key(email: str) -> int:
    """64-bit key of a normalised email: sync state and de-duplication work on these."""
    return xxhash.xxh3_64_intdigest(email)


@dataclass
class ProfileMapper:
    """Compiled from the export's columns, email field and mappings (source column -> Klaviyo attribute)."""

    columns: list[str]
    email_field: str
    field_mappings: dict[str, str] = field(default_factory=dict)
    consent: dict | None = None  # subscribe mode: consent_field, consent_values, consented_at_field

    def __post_init__(self) -> None:
        index = {name: i for i, name in enumerate(self.columns)}
        if self.email_field not in index:
            hint = ""
            for sep in ";\t|":
                if any(self.email_field in c.split(sep) for c in self.columns if sep in c):
                    hint = f"; the file looks {sep!r}-delimited (set the delimiter)"
            raise ConfigError(
                f"email field {self.email_field!r} is not a column of the export "
                f"(columns: {', '.join(self.columns)[:300]}){hint}"
            )
        missing = [src for src in self.field_mappings if src not in index]
        if missing:
            raise ConfigError(f"mapped field(s) not among the export's columns: {', '.join(missing)}")
        for target in self.field_mappings.values():
            try:
                check_target(target)  # the same rule the export configuration applies
            except PydanticCustomError as exc:
                raise ConfigError(str(exc)) from None
        self.width = len(self.columns)
        self.email_index = index[self.email_field]
        self.top: list[tuple[int, str]] = []
        self.location: list[tuple[int, str]] = []
        self.properties: list[tuple[int, str]] = []
        self.phone_index: int | None = None
        for src, target in self.field_mappings.items():
            head, _, tail = target.partition(".")
            if target == "phone_number":
                self.phone_index = index[src]
            elif head == "location":
                self.location.append((index[src], tail))
            elif head == "properties":
                self.properties.append((index[src], tail))
            else:
                self.top.append((index[src], head))
        self.consent_index = self.consented_at_index = None
        self.consent_values: set[str] = set()
        if self.consent:
            for key in ("consent_field", "consented_at_field"):
                col = self.consent.get(key)
                if col is not None and col not in index:
                    raise ConfigError(f"{key.replace('_', ' ')} {col!r} is not a column of the export")
            self.consent_index = index[self.consent["consent_field"]]
            at = self.consent.get("consented_at_field")
            self.consented_at_index = index[at] if at else None
            self.consent_values = {str(v).strip().lower() for v in self.consent.get("consent_values") or []}
        # The fingerprint covers what is sent: mapped fields, and in subscribe mode the consent fields.
        consent_columns = {i for i in (self.consent_index, self.consented_at_index) if i is not None}
        content = sorted({index[src] for src in self.field_mappings} | consent_columns)
        self.content_indexes = content
        if not content:
            self._content = lambda row: ()
        elif len(content) == 1:
            only = content[0]
            self._content = lambda row: (row[only],)
        else:
            self._content = itemgetter(*content)
        # Sync state records the mapping it was made under: a changed mapping resends everyone.
        mapping = [self.email_field, sorted(self.field_mappings.items()), self.consent or {}]
        self.mapping_key = xxhash.xxh3_64_hexdigest(orjson.dumps(mapping))

    def attributes(self, row: list[str], email: str) -> tuple[dict, str | None]:
        """Klaviyo profile attributes and a warning (e.g. a phone left out), if any."""
        attrs: dict = {"email": email}
        warning = None
        for i, key in self.top:
            value = row[i].strip()
            if value:
                attrs[key] = value
        if self.phone_index is not None:
            raw = row[self.phone_index].strip()
            if raw:
                phone = normalise_phone(raw)
                if phone:
                    attrs["phone_number"] = phone
                else:
                    warning = PHONE_WARNING
        if self.location:
            loc = {key: row[i].strip() for i, key in self.location if row[i].strip()}
            if loc:
                attrs["location"] = loc
        if self.properties:
            props = {key: row[i] for i, key in self.properties if row[i] != ""}
            if props:
                attrs["properties"] = props
        return attrs, warning

    def one_column_per_attribute(self) -> bool:
        """No two mappings onto one attribute, and none onto a top-level key the profile sets itself (the
        row path lets the later one win): what the column-wise profile builders need."""
        keys = [k for _, k in self.top] + [f"location.{k}" for _, k in self.location]
        keys += [f"properties.{k}" for _, k in self.properties]
        reserved = {"email", "phone_number", "location", "properties"}
        return len(set(keys)) == len(keys) and not reserved & {k for _, k in self.top}

    def skeleton_bytes(self) -> int:
        """A profile's JSON with every field one character long, and room to spare: escaping makes a value
        at most 6 times its length, so no record of n bytes makes a profile over this plus 6 n."""
        return len(self.profile_json(["x"] * self.width, "a@b.co")[0]) + 64

    def consent_of(self, row: list[str], now: datetime) -> tuple[bool, str | None, str | None]:
        """(consented, consented_at as ISO text or None, warning). Nobody is subscribed without a consent
        value the export names; a consented-at that is malformed or in the future is left out (the
        subscription is then not a historical import) with a warning."""
        if self.consent_index is None or row[self.consent_index].strip().lower() not in self.consent_values:
            return False, None, None
        if self.consented_at_index is None or not row[self.consented_at_index].strip():
            return True, None, None
        raw = row[self.consented_at_index].strip()
        try:
            when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            return True, None, "consented-at is not an ISO 8601 date; subscribed without it"
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        if when > now:
            return True, None, "consented-at is in the future; subscribed without it"
        return True, when.isoformat(), None

    def profile_json(self, row: list[str], email: str) -> tuple[bytes, str | None]:
        """The JSON:API profile resource, serialised (what a bulk import body is assembled from)."""
        attrs, warning = self.attributes(row, email)
        # orjson's result keeps a 4 KB allocation whatever its length; a copy holds only what it needs
        # (10,000 profiles in flight: 3 MB instead of 40 MB).
        return bytes(bytearray(orjson.dumps({"type": "profile", "attributes": attrs}))), warning
