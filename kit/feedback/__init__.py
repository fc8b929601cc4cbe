"""After go-live: the loop from the line back to the next model.

``shadow`` joins the station's decision logs with the inspectors' decisions (when to widen automation),
``ingest`` adds reviewed parts to the line's data, ``audit`` lists training labels that are likely wrong."""
