"""mmvthcl: VTHCL self-supervised video pretraining as an MMAction2 plugin."""
import os.path as osp

from setuptools import find_packages, setup


def _version() -> str:
    scope = {}
    with open(osp.join(osp.dirname(__file__), 'mmvthcl', 'version.py')) as f:
        exec(f.read(), scope)
    return scope['__version__']


def _readme() -> str:
    with open(osp.join(osp.dirname(__file__), 'README.md'),
              encoding='utf-8') as f:
        return f.read()


setup(
    name='mmvthcl',
    version=_version(),
    description='VTHCL (visual-tempo hierarchical contrastive learning) '
    'self-supervised video pretraining for MMAction2',
    long_description=_readme(),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    packages=find_packages(include=['mmvthcl', 'mmvthcl.*']),
    python_requires='>=3.8',
    # Ranges a GPU user can satisfy in their own environment; torch is theirs
    # to choose (CUDA build), so it is not pinned here. The known-good CPU pin
    # set lives in requirements/cpu.txt (used by `make install`).
    install_requires=[
        'mmaction2>=1.2,<1.3',
        'mmengine>=0.10,<1.0',
        'mmcv>=2.0.0rc4,<2.2.0',
        'decord>=0.6.0',
        'importlib-metadata',
        'matplotlib',
    ],
    extras_require={
        'ava': ['mmdet>=3.0,<3.4'],
        'tests': ['pytest'],
    },
    zip_safe=False,
)
