"""CloudTrail attribution: who the attacker is, and everything its credentials did.

Data flow: `sources` reads CloudTrail records (trail files, a trail's S3 prefix, LookupEvents),
`records` normalises them, and `graph` starts from the incident's compromised credentials and
follows what they created, changed and obtained, transitively. `stanch detect`, intake's
`--cloudtrail` and scope discovery all use this one graph.
"""

from runner.attribution.graph import Attribution, Edge, Seeds, attribute
from runner.attribution.records import actor_of, records_of

__all__ = ["Attribution", "Edge", "Seeds", "actor_of", "attribute", "records_of"]
