"""The project's exceptions: one root, a few meaningful subclasses."""


class BusError(Exception):
    """Root of every error the bus raises on purpose."""


class ConfigError(BusError):
    """The settings are missing or inconsistent; the service cannot start."""


class BrokerUnavailable(BusError):
    """RabbitMQ cannot be reached, or did not confirm a publish in time."""


class PublishRefused(BusError):
    """RabbitMQ returned or negatively acknowledged a publish."""


class DatabaseUnavailable(BusError):
    """The tracker's database cannot be reached."""


class UnknownTask(BusError):
    """A task id the bus never issued."""


class CallbackFailed(BusError):
    """The callback endpoint did not answer 2xx after every attempt."""


class RetryLater(BusError):
    """Raised by a handler: try this task again later (after `delay` seconds, or the policy's)."""

    def __init__(self, reason: str = "retry later", delay: float | None = None) -> None:
        super().__init__(reason)
        self.delay = delay


class NeverRetry(BusError):
    """Raised by a handler: this task failed for good; report it failed without retrying."""


class InputRequired(BusError):
    """Raised by a handler: the task needs an answer from `to` (its sender when None).

    The task waits `input_required`, holding no delivery, slot or thread; once answered
    (POST /api/relay/tasks/{id}/input) it comes back to its pool and the handler runs again
    from the start, with every question and answer so far in `task.inputs`.
    """

    def __init__(self, question: str, to: str | None = None) -> None:
        super().__init__(question)
        self.question = question
        self.to = to


class CallbackRefused(BusError):
    """The API refused the callback's content (4xx): sending it again cannot help."""
