include:
  - .install
  - .service
