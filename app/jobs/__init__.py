"""Job lifecycle: statuses, service functions, API routes and pages."""
