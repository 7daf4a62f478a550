"""Brokers: ids, the last-N buffer, cursors and run snapshots. memory (one worker; also the Broker protocol the
hub relies on) and redis (one event stream shared by every worker on every host: redis_scripts holds
its keys and Lua, redis_replica each worker's replica and the follower that feeds it)."""
