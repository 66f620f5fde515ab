"""AWS evidence sinks (all optional, all off by default): S3 archive, Security Hub, CloudWatch, EKS."""
