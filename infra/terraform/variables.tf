variable "project" {
  description = "Google Cloud project id."
  type        = string
}

variable "region" {
  description = "Region of the bucket, the image repository, the Dataflow jobs and the scheduler job."
  type        = string
  default     = "europe-west1"
}

variable "bucket_name" {
  description = "Bucket for the template spec, Dataflow temp/staging files and imgsim's output (created here)."
  type        = string
}

variable "output_prefix" {
  description = "Output root inside the bucket: runs land in gs://BUCKET/PREFIX/runs/RUN_ID/, the pointer in gs://BUCKET/PREFIX/LATEST."
  type        = string
  default     = "imgsim"

  validation {
    condition     = can(regex("^[a-z0-9][-_.a-z0-9/]*[a-z0-9]$", var.output_prefix))
    error_message = "output_prefix is a path inside the bucket without leading or trailing '/'."
  }
}

variable "repository_id" {
  description = "Artifact Registry repository (docker) for the imgsim images."
  type        = string
  default     = "imgsim"
}

variable "image" {
  description = "CPU image (infra/Dockerfile): REGION-docker.pkg.dev/PROJECT/REPOSITORY/imgsim:TAG. Also the image the template spec was built from."
  type        = string
}

variable "gpu_image" {
  description = "GPU image (infra/Dockerfile.gpu), used as the workers' SDK container when worker_profile is \"gpu\"."
  type        = string
  default     = ""
}

variable "worker_profile" {
  description = "Worker profile: \"cpu\", \"int8\" (OpenVINO int8 on VNNI/AMX machines) or \"gpu\"; machine type, worker count, experiments and the profile's own parameters come from infra/profiles/PROFILE.json."
  type        = string
  default     = "cpu"

  validation {
    condition     = contains(["cpu", "int8", "gpu"], var.worker_profile)
    error_message = "worker_profile is \"cpu\", \"int8\" or \"gpu\"."
  }
}

variable "max_workers" {
  description = "Maximum Dataflow workers (null: the profile's --max-workers)."
  type        = number
  default     = null
}

variable "disk_size_gb" {
  description = "Worker boot disk size; the GPU image alone is several GB."
  type        = number
  default     = 50
}

variable "schedule" {
  description = "When to reprocess, in cron syntax (Cloud Scheduler)."
  type        = string
  default     = "0 3 * * *"
}

variable "time_zone" {
  description = "Time zone of the schedule (tz database name)."
  type        = string
  default     = "Etc/UTC"
}

variable "run_retention_days" {
  description = "Objects under PREFIX/runs/ older than this are deleted by the bucket's lifecycle rule."
  type        = number
  default     = 90

  validation {
    condition     = var.run_retention_days >= 7
    error_message = "run_retention_days must be at least 7: the run LATEST points to must never be older than this."
  }
}

variable "input" {
  description = "The template's input parameter: a gs:// manifest, a gs:// glob of images, or \"cma\"."
  type        = string
}

variable "extra_parameters" {
  description = "More template parameters (names from infra/metadata.json, values as strings), e.g. { cma_cc0 = \"true\", keep_runs = \"30\", min_recall = \"0.9\" }. input and output are set from their own variables."
  type        = map(string)
  default     = {}
}

variable "job_name" {
  description = "Dataflow job name of the scheduled runs. A fixed name means a launch fails while the previous scheduled run is still running, so runs never overlap."
  type        = string
  default     = "imgsim-scheduled"

  validation {
    condition     = can(regex("^[a-z]([-a-z0-9]*[a-z0-9])?$", var.job_name))
    error_message = "job_name: lower-case letters, digits and '-', starting with a letter."
  }
}

variable "serve_image" {
  description = "imgsim serve image (infra/Dockerfile.serve): when set, a Cloud Run service serves the published index and follows LATEST. Empty: no service."
  type        = string
  default     = ""
}

variable "serve_refresh_seconds" {
  description = "How often the service checks LATEST for a new run to swap in."
  type        = number
  default     = 30
}

variable "serve_min_instances" {
  description = "Cloud Run instances kept warm (1 keeps the index loaded between requests)."
  type        = number
  default     = 1
}

variable "serve_max_instances" {
  description = "Cloud Run instances at most."
  type        = number
  default     = 4

  validation {
    condition     = var.serve_max_instances >= 1
    error_message = "serve_max_instances must be at least 1."
  }
}

variable "serve_cpu" {
  description = "vCPUs per Cloud Run instance."
  type        = string
  default     = "2"
}

variable "serve_memory" {
  description = "Memory per Cloud Run instance: the index (vectors, ids, searcher) and, for search by image, VGG16."
  type        = string
  default     = "4Gi"
}

variable "serve_public" {
  description = "Let anyone call the service (roles/run.invoker for allUsers)."
  type        = bool
  default     = false
}
