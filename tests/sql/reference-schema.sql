-- Task execution history
CREATE TABLE housekeeper_runs (
  id SERIAL PRIMARY KEY,
  task_name VARCHAR(255) NOT NULL,
  started_at TIMESTAMP NOT NULL,
  completed_at TIMESTAMP,
  status VARCHAR(50) NOT NULL,
  duration_ms INTEGER,
  output TEXT,
  error TEXT,
  triggered_by VARCHAR(50) DEFAULT 'scheduler'
);

-- Task configuration
CREATE TABLE housekeeper_config (
  task_name VARCHAR(255) PRIMARY KEY,
  enabled BOOLEAN DEFAULT true,
  schedule VARCHAR(255),
  last_modified_at TIMESTAMP DEFAULT NOW()
);

-- Security scan results (for security-scan-images task)
CREATE TABLE image_security_scans (
  id SERIAL PRIMARY KEY,
  image_id INTEGER REFERENCES image_registry(id),
  scanned_at TIMESTAMP NOT NULL,
  vulnerabilities JSONB NOT NULL,  -- {critical, high, medium, low, unknown, total}
  scan_status VARCHAR(20) NOT NULL,  -- passed, warning, failed
  details JSONB,  -- Top 100 vulnerability details
  error TEXT,
  created_at TIMESTAMP DEFAULT NOW()
);

-- Get task statistics
CREATE OR REPLACE FUNCTION get_housekeeper_stats()
RETURNS TABLE (
  task_name VARCHAR,
  total_runs BIGINT,
  success_count BIGINT,
  error_count BIGINT,
  avg_duration_ms NUMERIC,
  last_run_at TIMESTAMP,
  last_status VARCHAR
) AS $$
  SELECT 
    task_name,
    COUNT(*) as total_runs,
    SUM(CASE WHEN status = 'success' THEN 1 ELSE 0 END) as success_count,
    SUM(CASE WHEN status = 'error' THEN 1 ELSE 0 END) as error_count,
    AVG(duration_ms) as avg_duration_ms,
    MAX(started_at) as last_run_at,
    (SELECT status FROM housekeeper_runs hr2 
     WHERE hr2.task_name = hr.task_name 
     ORDER BY started_at DESC LIMIT 1) as last_status
  FROM housekeeper_runs hr
  GROUP BY task_name;
$$ LANGUAGE SQL;
