"""HTTP plumbing of the service: the error contract as responses, the outermost middleware
(framework errors, deadline), the upload limit, and calls to the inference worker."""
