"""Brokers: ids, the last-N buffer, cursors and run snapshots. memory (one worker; also the Broker protocol the
hub relies on) and redis (one event stream shared by every worker on every host)."""
