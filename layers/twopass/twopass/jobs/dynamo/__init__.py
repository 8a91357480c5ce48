"""The parts :class:`twopass.jobs.dynamodb.DynamoJobStore` is composed of, one job each."""
