"""The shared service runtime: the one consumer loop, inbox, outbox relay, retries, dead
letters, per-key order and observability that every revsync service runs on."""
