"""Parse an OpenMetrics text exposition from stdin with prometheus_client's parser (a
real, independent parser, strict about the format) and print its samples as one JSON
list: [{"family", "type", "name", "labels", "value"}]. Exits non-zero, with the parser's
error, when the text is not valid OpenMetrics."""

import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

samples = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for sample in family.samples:
        samples.append(
            {
                "family": family.name,
                "type": family.type,
                "name": sample.name,
                "labels": sample.labels,
                "value": sample.value,
            }
        )
json.dump(samples, sys.stdout)
