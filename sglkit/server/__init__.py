"""The server room: serve a profile with SGLang (spec, runner, state, load, tasks).

spec.py     the typed server spec: profile + overrides -> flags, argv, environment, URL
runner.py   the one server lifecycle: start, wait ready, check the model, requests, stop
state.py    the state file of a detached server (pid, argv, URL, run)
load.py     a short load of /generate requests with input ids, and its percentiles
tasks.py    invoke server.*
"""
