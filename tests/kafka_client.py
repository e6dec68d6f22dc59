"""A Kafka client no one in this project wrote (confluent-kafka), for the tests.

    python3 kafka_client.py produce BROKER TOPIC [TIMESTAMP_MS] < lines   # one record per line, "key\tvalue" or "value"
    python3 kafka_client.py produce-records BROKER TOPIC < lines  # one JSON per line: key, value (null: tombstone), headers, timestamp, partition
    python3 kafka_client.py consume BROKER TOPIC COUNT [IDLE]  # prints JSON per record: key, value, partition, offset, headers
    python3 kafka_client.py produce-avro BROKER TOPIC REGISTRY SCHEMA < lines   # JSON objects, Avro-encoded by confluent-kafka
    python3 kafka_client.py consume-avro BROKER TOPIC COUNT REGISTRY            # prints each decoded value as JSON
    python3 kafka_client.py registry PORT     # a schema registry serving the REST calls clients make (none is installable here)
"""
import json
import sys

from confluent_kafka import Consumer, Producer


def produce(broker, topic, timestamp=None):
    producer = Producer({"bootstrap.servers": broker})
    for line in sys.stdin.read().splitlines():
        key, _, value = line.partition("\t") if "\t" in line else (None, "", line)
        extra = {"timestamp": int(timestamp)} if timestamp else {}
        producer.produce(topic, value=value.encode(), key=key.encode() if key else None, **extra)
    if producer.flush(30) != 0:
        sys.exit("records not delivered")


def produce_records(broker, topic):
    producer = Producer({"bootstrap.servers": broker})
    for line in sys.stdin.read().splitlines():
        r = json.loads(line)
        extra = {"timestamp": int(r["timestamp"])} if r.get("timestamp") else {}
        if r.get("partition") is not None:
            extra["partition"] = int(r["partition"])
        value = r.get("value")
        producer.produce(topic, value=value.encode() if value is not None else None,
                         key=r["key"].encode() if r.get("key") is not None else None,
                         headers=[(k, v.encode()) for k, v in (r.get("headers") or {}).items()], **extra)
    if producer.flush(30) != 0:
        sys.exit("records not delivered")


def registry(port):
    """Confluent's schema registry REST API, the subset clients use, in memory."""
    import http.server
    import re
    schemas, ids, subjects = {}, {}, {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def answer(self, code, body):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            path = self.path.split("?")[0]
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            m = re.fullmatch(r"/subjects/([^/]+)/versions", path)
            if not m:
                return self.answer(404, {"error_code": 404, "message": "not found"})
            schema = body["schema"]
            if schema not in ids:
                ids[schema] = len(ids) + 1
                schemas[ids[schema]] = schema
            versions = subjects.setdefault(m.group(1), [])
            if ids[schema] not in versions:
                versions.append(ids[schema])
            self.answer(200, {"id": ids[schema]})

        def do_GET(self):
            path = self.path.split("?")[0]
            m = re.fullmatch(r"/schemas/ids/(\d+)", path)
            if m and int(m.group(1)) in schemas:
                return self.answer(200, {"schema": schemas[int(m.group(1))]})
            m = re.fullmatch(r"/subjects/([^/]+)/versions/latest", path)
            if m and subjects.get(m.group(1)):
                sid = subjects[m.group(1)][-1]
                return self.answer(200, {"subject": m.group(1), "id": sid, "version": len(subjects[m.group(1)]),
                                         "schema": schemas[sid]})
            self.answer(404, {"error_code": 40403, "message": "not found"})

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(port)), Handler)
    print("ready", flush=True)
    server.serve_forever()


def produce_avro(broker, topic, registry_url, schema):
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext
    serializer = AvroSerializer(SchemaRegistryClient({"url": registry_url}), schema)
    producer = Producer({"bootstrap.servers": broker})
    for line in sys.stdin.read().splitlines():
        record = json.loads(line)
        if "raw" in record:
            producer.produce(topic, value=record["raw"].encode())
            continue
        value = serializer(record, SerializationContext(topic, MessageField.VALUE))
        producer.produce(topic, value=value)
    if producer.flush(30) != 0:
        sys.exit("records not delivered")


def records(broker, topic, group, count, idle_limit=60):
    """Up to `count` records of `topic`, read as consumer group `group`, until
    `idle_limit` seconds pass without one."""
    consumer = Consumer({"bootstrap.servers": broker, "group.id": group,
                         "auto.offset.reset": "earliest", "session.timeout.ms": 6000})
    consumer.subscribe([topic])
    seen, idle = 0, 0
    while seen < count and idle < idle_limit:
        msg = consumer.poll(1.0)
        if msg is None:
            idle += 1
            continue
        if msg.error():
            continue
        yield msg
        seen += 1
    consumer.close()


def consume_avro(broker, topic, count, registry_url):
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer
    from confluent_kafka.serialization import MessageField, SerializationContext
    deserializer = AvroDeserializer(SchemaRegistryClient({"url": registry_url}))
    for msg in records(broker, topic, "avro-reader", count):
        value = deserializer(msg.value(), SerializationContext(topic, MessageField.VALUE))
        print(json.dumps(value, default=str), flush=True)


def consume(broker, topic, count, idle_limit=60):
    for msg in records(broker, topic, "test-reader", count, idle_limit):
        headers = {k: (v.decode() if v is not None else None) for k, v in (msg.headers() or [])}
        print(json.dumps({"key": msg.key().decode() if msg.key() is not None else None,
                          "value": msg.value().decode(errors="replace") if msg.value() is not None else None,
                          "partition": msg.partition(), "offset": msg.offset(), "headers": headers}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "registry":
        registry(sys.argv[2])
        sys.exit(0)
    cmd, broker, topic = sys.argv[1:4]
    if cmd == "produce-avro":
        produce_avro(broker, topic, sys.argv[4], sys.argv[5])
    elif cmd == "consume-avro":
        consume_avro(broker, topic, int(sys.argv[4]), sys.argv[5])
    elif cmd == "produce-records":
        produce_records(broker, topic)
    elif cmd == "produce":
        produce(broker, topic, sys.argv[4] if len(sys.argv) > 4 else None)
    else:
        consume(broker, topic, int(sys.argv[4]), int(sys.argv[5]) if len(sys.argv) > 5 else 60)
