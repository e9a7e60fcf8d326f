"""``revsync schemas docs``: an AsyncAPI 3.0 document generated from the catalog and schemas."""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

from revsync.contracts.catalog import Catalog, TopicFormat, TopicKind, TopicPlan, TopicSpec
from revsync.contracts.schemas import SchemaRepository

AVRO_FORMAT = "application/vnd.apache.avro+json;version=1.9.0"
JSON_SCHEMA_FORMAT = "application/schema+json;version=draft-07"
KAFKA_BINDING = "0.5.0"


def build_document(catalog: Catalog, schemas: SchemaRepository) -> dict[str, Any]:
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for plan in catalog.topic_plan():
        channel_id = plan.name.replace(".", "_")
        channels[channel_id] = _channel(plan, catalog)
        if plan.source is None:
            continue
        topic = plan.source
        message_name, messages[message_name] = _message(topic, schemas)
        channels[channel_id]["messages"] = {
            message_name: {"$ref": f"#/components/messages/{message_name}"}
        }
        reference = {"$ref": f"#/channels/{channel_id}/messages/{message_name}"}
        for producer in topic.producers:
            operations[f"{producer}.send.{channel_id}"] = {
                "action": "send",
                "channel": {"$ref": f"#/channels/{channel_id}"},
                "summary": f"{producer} publishes {message_name}",
                "messages": [reference],
            }
        for consumer in topic.consumers:
            service = catalog.consumers[consumer].service
            operations[f"{consumer}.receive.{channel_id}"] = {
                "action": "receive",
                "channel": {"$ref": f"#/channels/{channel_id}"},
                "summary": f"{service} consumes {message_name} as consumer group {consumer}",
                "messages": [reference],
                "bindings": {
                    "kafka": {
                        "groupId": {"type": "string", "enum": [consumer]},
                        "bindingVersion": KAFKA_BINDING,
                    }
                },
            }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "revsync order-to-cash events",
            "version": version("revsync"),
            "description": (
                "Events revsync exchanges to keep a CRM and an ERP in sync. Generated from "
                "schemas/avro/catalog.yaml and the .avsc contracts; edit those, not this."
            ),
        },
        "defaultContentType": AVRO_FORMAT,
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    }


def _message(topic: TopicSpec, schemas: SchemaRepository) -> tuple[str, dict[str, Any]]:
    key = {"type": "string", "description": f"the event's {topic.key}"}
    if topic.format is TopicFormat.SALESFORCE_CDC:
        return "OrderChangeEvent", {
            "name": "OrderChangeEvent",
            "title": "OrderChangeEvent",
            "summary": topic.description,
            "contentType": "application/json",
            "payload": {
                "schemaFormat": JSON_SCHEMA_FORMAT,
                "schema": {
                    "type": "object",
                    "description": (
                        "A Salesforce Change Data Capture event: ChangeEventHeader plus the "
                        "changed fields; optionally wrapped with its replayId and schema id."
                    ),
                },
            },
            "bindings": {"kafka": {"key": key, "bindingVersion": KAFKA_BINDING}},
        }
    name = topic.avro_schema.rsplit(".", 1)[1]
    return name, {
        "name": name,
        "title": name,
        "summary": schemas.definitions[topic.avro_schema]["doc"],
        "contentType": AVRO_FORMAT,
        "payload": {"schemaFormat": AVRO_FORMAT, "schema": schemas.expanded(topic.avro_schema)},
        "bindings": {
            "kafka": {
                "key": key,
                "schemaIdLocation": "payload",
                "schemaIdPayloadEncoding": "confluent",
                "schemaLookupStrategy": "TopicIdStrategy",
                "bindingVersion": KAFKA_BINDING,
            }
        },
    }


def _channel(plan: TopicPlan, catalog: Catalog) -> dict[str, Any]:
    if plan.kind is TopicKind.EVENTS:
        assert plan.source is not None
        description = f"{plan.source.description} System of record: {plan.source.owner}."
    else:
        assert plan.consumer is not None
        what = {
            TopicKind.DEAD_LETTER: "dead letters",
            TopicKind.REPLAY: "dead letters replayed by an operator",
        }.get(plan.kind, f"retry tier, delay {plan.name.rsplit('.', 1)[1]}")
        description = (
            f"Consumer {plan.consumer}'s {what}: the original key, value bytes and headers, "
            "plus error headers. Only that consumer reads it."
        )
    return {
        "address": plan.name,
        "description": description,
        "bindings": {
            "kafka": {
                "topic": plan.name,
                "partitions": plan.partitions,
                "topicConfiguration": {
                    "cleanup.policy": plan.config["cleanup.policy"].split(","),
                    "retention.ms": int(plan.config["retention.ms"]),
                },
                "bindingVersion": KAFKA_BINDING,
            }
        },
    }
