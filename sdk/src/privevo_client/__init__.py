"""Python client for the privevo REST API: differentially private synthetic data.

>>> from privevo_client import Client
>>> with Client("http://127.0.0.1:8000", "pev_...") as client:  # doctest: +SKIP
...     data = client.datasets.upload("digits/", epsilon_cap=2.0)
...     job = client.jobs.create(data, epsilon=1.0, iterations=2, num_samples=40)
...     job.wait().download("out/")
"""

from privevo_client._core import VERSION as __version__
from privevo_client.aio import AsyncClient, AsyncJob
from privevo_client.client import Client, Job
from privevo_client.errors import (
    BudgetExceeded,
    Conflict,
    InvalidRequest,
    JobFailed,
    NotFound,
    PayloadTooLarge,
    PrivevoAPIError,
    PrivevoClientError,
    PrivevoConnectionError,
    QuotaExceeded,
    ServiceUnavailable,
    Unauthorized,
    UnsafeArchiveError,
)
from privevo_client.models import Audit, Budget, Dataset, Evaluation, Event

__all__ = [
    "AsyncClient",
    "AsyncJob",
    "Audit",
    "Budget",
    "BudgetExceeded",
    "Client",
    "Conflict",
    "Dataset",
    "Evaluation",
    "Event",
    "InvalidRequest",
    "Job",
    "JobFailed",
    "NotFound",
    "PayloadTooLarge",
    "PrivevoAPIError",
    "PrivevoClientError",
    "PrivevoConnectionError",
    "QuotaExceeded",
    "ServiceUnavailable",
    "Unauthorized",
    "UnsafeArchiveError",
    "__version__",
]
