"""The line interfaces (the ``line`` extra: paho-mqtt, asyncua, pymodbus): the station talks to the line.

    config      LineConfig: what ``--publish``, ``--opcua``, ``--modbus`` ask for, parsed and checked
    events      the event schema: decisions, model changes, readiness and drift verdicts as JSON events
    cursor      a durable cursor over the decision log (what a sink has delivered, atomically on disk)
    follower    the sink thread: cursor -> events -> sink, acknowledged before the cursor moves, back-off
    mqtt        the MQTT sink (QoS 1, a retained status with a last will, TLS, credentials from a file)
    publisher   the MQTT sink as a niced child process of the station (no interpreter lock shared with inspections)
    tally       counters per action and the last result for the PLC servers; StationView
    handshake   the PLC handshake state machine shared by OPC UA and Modbus (trigger, busy, result, acknowledge)
    opcua       the station as an OPC UA server (asyncua): status, counters, last result, the handshake
    modbus      the same on Modbus TCP coils and registers (pymodbus)
    line_test   ``deploy line-test``: plays a PLC against a station on commissioning day

Sinks never publish from the request path: they follow the decision log, so a slow or absent broker never
slows an inspection and nothing answered is lost. The protocol libraries are imported inside functions: an
edge install without the extra keeps working. Nothing here imports ``deploy.serve`` (the station's glue is
``deploy.serve.line``).
"""
