"""The worker's stages, one class each, in flow order: ``DecodeStage`` -> ``ClassifyStage`` ->
``WindowStage``. app.py wires them to their topics and tables. Each stage keeps its Kafka and
Elasticsearch plumbing here and its decisions in a pure module (decode, scoring, aggregation)."""
