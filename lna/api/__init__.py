"""The Python API (docs/api.md): the engines of the CLIs, for notebooks and scripts.

    lna.profile(model, dataset, ...) -> Store      lna-profile (lna.profiling.profile.run)
    lna.open(path) -> Store                         a count store (lna.storage.store)
    lna.identify(store, ...) -> NeuronSets          lna-identify (lna.identification.identify)
    lna.ablate(model, neurons, responses, ...)      lna-ablate (lna.interventions.ablate.run)
    lna.count(model, langs) -> Counter              counting inside your own forward/generate
    lna.steer(model, ...)                           interventions inside a `with` block

One engine, two faces: each function calls what its CLI calls, so their results are the
same bit for bit (tests/test_api.py). Nothing here is imported by `import lna`; each module
is loaded on first use (lna.__getattr__), and torch only by the functions that run a model.
"""
