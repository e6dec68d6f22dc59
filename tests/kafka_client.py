"""A Kafka client no one in this project wrote (confluent-kafka), for the tests.

    python3 kafka_client.py produce BROKER TOPIC [TIMESTAMP_MS] < lines   # one record per line, "key\tvalue" or "value"
    python3 kafka_client.py produce-records BROKER TOPIC < lines  # one JSON per line: key, value (null: tombstone), headers, timestamp, partition
    python3 kafka_client.py consume BROKER TOPIC COUNT [IDLE]  # prints JSON per record: key, value, partition, offset, headers
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


def consume(broker, topic, count, idle_limit=60):
    consumer = Consumer({"bootstrap.servers": broker, "group.id": "test-reader",
                         "auto.offset.reset": "earliest", "session.timeout.ms": 6000})
    consumer.subscribe([topic])
    seen = 0
    idle = 0
    while seen < count and idle < idle_limit:
        msg = consumer.poll(1.0)
        if msg is None:
            idle += 1
            continue
        if msg.error():
            continue
        headers = {k: (v.decode() if v is not None else None) for k, v in (msg.headers() or [])}
        print(json.dumps({"key": msg.key().decode() if msg.key() else None,
                          "value": msg.value().decode(errors="replace") if msg.value() is not None else None,
                          "partition": msg.partition(), "offset": msg.offset(), "headers": headers}), flush=True)
        seen += 1
    consumer.close()


if __name__ == "__main__":
    cmd, broker, topic = sys.argv[1:4]
    if cmd == "produce-records":
        produce_records(broker, topic)
    elif cmd == "produce":
        produce(broker, topic, sys.argv[4] if len(sys.argv) > 4 else None)
    else:
        consume(broker, topic, int(sys.argv[4]), int(sys.argv[5]) if len(sys.argv) > 5 else 60)
