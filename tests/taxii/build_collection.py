#!/usr/bin/env python3
"""Builds the medallion data file and the later revocation for tests/ti_feeds.rs.

The STIX objects come from the OASIS `stix2` library (which validates
patterns and timestamps), so the test checks enrichd against an outside
implementation of STIX 2.1, not against its own idea of it.

Usage: build_collection.py OUT_DIR BASE_URL  -> OUT_DIR/data.json, OUT_DIR/revoke.json
(BASE_URL: where medallion listens, e.g. http://127.0.0.1:9000)
"""
import json
import sys
from datetime import datetime, timedelta, timezone

import stix2

COLLECTION = "91a7b528-80eb-42ed-a74d-c6fbd5a26116"
out, base = sys.argv[1], sys.argv[2].rstrip("/")
now = datetime.now(timezone.utc)
later = now + timedelta(days=365 * 5)


def indicator(pattern, **kw):
    return stix2.Indicator(pattern=pattern, pattern_type="stix", valid_from=now - timedelta(days=1), **kw)


c2 = indicator("[ipv4-addr:value = '203.0.113.10']", name="C2 server", confidence=90,
               labels=["c2", "botnet"], valid_until=later, indicator_types=["malicious-activity"])
objects = [
    c2,
    indicator("[ipv4-addr:value = '198.51.100.0/24']", name="scanner net", confidence=40),
    indicator("[ipv6-addr:value = '2001:db8::bad']", confidence=70, labels=["ipv6"]),
    indicator("[domain-name:value = 'evil.example']", name="phishing domain", confidence=80, labels=["phishing"]),
    indicator("[url:value = 'http://phish.example/login.php']", confidence=60),
    indicator("[ipv4-addr:value = '203.0.113.20'] OR [domain-name:value = 'or.example']", confidence=50),
    indicator("[file:hashes.'SHA-256' = "
              "'aec070645fe53ee3b3763059376134f058cc337247c978add178b6ccdfb0019f']", name="unsupported"),
    stix2.Identity(name="test feed", identity_class="organization"),
]
gone = indicator("[ipv4-addr:value = '203.0.113.99']", confidence=10)
objects.append(gone.revoke())


def stored(obj, added):
    entry = json.loads(obj.serialize())
    return entry, {"id": entry["id"], "date_added": added, "version": entry.get("modified", entry.get("created")),
                   "media_type": "application/stix+json;version=2.1"}


entries, manifest = [], []
for i, obj in enumerate(objects):
    # Distinct, increasing date_added: added_after paging needs an order.
    added = (now - timedelta(minutes=60 - i)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    e, m = stored(obj, added)
    entries.append(e)
    manifest.append(m)

data = {
    "/discovery": {"title": "enrichd test TAXII", "default": f"{base}/api1/",
                   "api_roots": [f"{base}/api1/"]},
    "api1": {
        "information": {"title": "api1", "versions": ["application/taxii+json;version=2.1"],
                        "max_content_length": 10485760},
        "status": [],
        "collections": [{
            "id": COLLECTION, "title": "indicators", "can_read": True, "can_write": True,
            "media_types": ["application/stix+json;version=2.1"],
            "objects": entries, "manifest": manifest,
        }],
    },
}
with open(f"{out}/data.json", "w") as f:
    json.dump(data, f)
# The C2 indicator revoked later (posted by the test): a new version.
with open(f"{out}/revoke.json", "w") as f:
    f.write(json.dumps({"objects": [json.loads(c2.revoke().serialize())]}))
