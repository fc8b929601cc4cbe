"""Anomaly mode (``task: anomaly``): the good part learnt from good parts alone, distilled, certified, explained.

``model`` (the networks), ``train`` (teacher against synthetic defects, student by cross-view feature regression),
``stages`` (the training stages of ``kit run``), ``export`` (the bundle with ``score`` and ``anomaly_map``),
``metrics`` (AUROC, AUPR, pointing, AUPRO), ``verify`` (the certified operating point and the figures),
``record`` (``verify/anomaly.json``), ``report`` (page one: GO, GO after a shadow period, NO-GO).
"""
