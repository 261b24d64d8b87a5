"""feedrec: a TFX pipeline for a two-stage (recall, ranking) feed recommender."""
from setuptools import Extension, find_packages, setup

setup(
    name="feedrec",
    version="0.1.0",
    description="Two-stage feed recommender (Item2vec/YouTubeNet/two-tower recall, "
                "NFM/NFwFM ranking) as a TFX pipeline with TF-Serving-compatible serving.",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["feature_contract*", "beam_jobs*", "models*", "components*", "pipelines*",
                                    "serving*", "bench*"]),
    package_data={"feature_contract": ["configs/*.yaml"]},
    # The sessionize job's per-event loops in C (beam_jobs/compiled.py). optional:
    # without a compiler the install goes on and the job runs the same loops in Python.
    ext_modules=[Extension("beam_jobs._fastloops", ["beam_jobs/_fastloops.c"], optional=True)],
    # Pinned versions live in requirements.lock (installed by `make install`);
    # tfx, ml-pipelines-sdk and ml-metadata go in with --no-deps (see README).
    install_requires=[
        "tensorflow>=2.21,<2.22", "tf-keras>=2.21,<2.22", "tensorflow-recommenders==0.7.7",
        "apache-beam[gcp]>=2.77,<2.78", "faiss-cpu", "tensorflow-serving-api>=2.19,<2.20",
        "pyyaml",
    ],
    extras_require={"bench": ["implicit", "gensim"],  # + deepctr==0.9.3 --no-deps
                    "test": ["pytest"]},
    entry_points={"console_scripts": [
        "feedrec-sessionize=beam_jobs.sessionize:main",
    ]},
)
