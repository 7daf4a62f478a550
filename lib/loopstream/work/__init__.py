"""The work side: runs stories, wraps commands, tails logs, adapts agents, reports from Python. Talks to a
sidecar only through client/ (imports core/ and client/, never sidecar/ or cli/).

stories (`loop run`: a PRD's stories as children), agent (agent-aware stories), prd (PRD files), capture
(`loop exec`, `loop tail`), adapt (`loop adapt`), harness (around every run: name, sidecar, ETA, control,
signals), processes (stopping a child), embedded (the sidecar a run starts), reporter (the Python API).
"""
