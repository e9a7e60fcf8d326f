"""Local simulators of the CRM and the ERP, for the demo, the tests and the benchmarks.

Never imported by production code: the services reach these only over HTTP and Kafka, as
they reach the real systems.
"""
