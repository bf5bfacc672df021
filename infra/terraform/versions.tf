terraform {
  required_version = ">= 1.5"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 5.0, < 8.0"
    }
  }

  # Keep the state somewhere shared, e.g. a bucket created once by hand:
  # backend "gcs" {
  #   bucket = "my-terraform-state"
  #   prefix = "imgsim"
  # }
}

provider "google" {
  project = var.project
  region  = var.region
}
