"""Operators' tooling: dead letters inspected, replayed, purged and archived, and a
consumer group rewound, every action audited."""
