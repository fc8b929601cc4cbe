"""Onboarding a new line: scaffold its recipe from a folder (``init_line``), fit its views to the camera (``calibrate``)."""
